//! Step failures, classified: the class decides what the scheduler does next.

use serde::{Deserialize, Serialize};

/// What a failure means for the run (seed requirement 6.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ErrorClass {
    /// May succeed if tried again (throttling, time-outs, 5xx). Retried by the node's policy.
    Transient,
    /// Will fail the same way again (bad input, access denied). Never retried.
    Permanent,
    /// Unsafe to continue anything (integrity failure, account limit). Fails the whole run at
    /// once and cancels running nodes.
    Critical,
}

impl ErrorClass {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::Transient => "transient",
            ErrorClass::Permanent => "permanent",
            ErrorClass::Critical => "critical",
        }
    }
}

/// A step's failure: a class, a message for people, the chain of causes and free-form context
/// (e.g. the AWS request id, the last stack events).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, thiserror::Error)]
#[error("{class:?}: {message}")]
pub struct StepError {
    pub class: ErrorClass,
    pub message: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub causes: Vec<String>,
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub context: serde_json::Value,
}

impl StepError {
    pub fn new(class: ErrorClass, message: impl Into<String>) -> Self {
        StepError {
            class,
            message: message.into(),
            causes: Vec::new(),
            context: serde_json::Value::Null,
        }
    }

    pub fn transient(message: impl Into<String>) -> Self {
        Self::new(ErrorClass::Transient, message)
    }

    pub fn permanent(message: impl Into<String>) -> Self {
        Self::new(ErrorClass::Permanent, message)
    }

    pub fn critical(message: impl Into<String>) -> Self {
        Self::new(ErrorClass::Critical, message)
    }

    /// Records the source chain of `err` as causes.
    pub fn caused_by(mut self, err: &(dyn std::error::Error + 'static)) -> Self {
        let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
        while let Some(e) = cur {
            self.causes.push(e.to_string());
            cur = e.source();
        }
        self
    }

    pub fn with_context(mut self, context: serde_json::Value) -> Self {
        self.context = context;
        self
    }
}
