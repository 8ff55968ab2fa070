//! Who a message is for: a Slack user, channel or user group by id, or a channel by `#name`.
//! Only strings of exactly these shapes ever become Slack markup (a mention or a channel link);
//! anything else is shown as text, escaped, so data can never ping `@channel` or hide a link.

/// A stakeholder as Slack knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SlackTarget {
    /// `U…`/`W…`: mentioned as `<@U…>`.
    User(String),
    /// `C…`/`G…`/`D…`: linked as `<#C…>`.
    Channel(String),
    /// `S…`: a user group, mentioned as `<!subteam^S…>`.
    Group(String),
    /// `#name`, by Slack's channel-name rules (lowercase letters, digits, `-`, `_`; at most
    /// 80): shown as text (Slack links names only in what people type).
    ChannelName(String),
}

/// Slack ids: a type letter, then upper-case letters and digits (8 to 10 of them in
/// practice; the charset is what makes one safe to put in markup, so shorter test ids pass).
fn id_of(s: &str, kinds: &[char]) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| kinds.contains(&c))
        && (2..=21).contains(&s.len())
        && chars.all(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
}

/// Reads a stakeholder, or says what it should look like.
pub fn slack_target(s: &str) -> Result<SlackTarget, String> {
    if id_of(s, &['U', 'W']) {
        return Ok(SlackTarget::User(s.to_string()));
    }
    if id_of(s, &['C', 'G', 'D']) {
        return Ok(SlackTarget::Channel(s.to_string()));
    }
    if id_of(s, &['S']) {
        return Ok(SlackTarget::Group(s.to_string()));
    }
    if let Some(name) = s.strip_prefix('#') {
        if !name.is_empty()
            && name.len() <= 80
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
        {
            return Ok(SlackTarget::ChannelName(s.to_string()));
        }
        return Err(format!(
            "{s:?} is not a Slack channel name: lowercase letters, digits, `-` and `_`, at most 80"
        ));
    }
    Err(format!(
        "{s:?} is neither a Slack user, channel or user group id (`U0123ABCD`, `C0123ABCD`, `S0123ABCD`) nor `#channel-name`"
    ))
}

/// Problems of a `to:` list, one per entry, with its index.
pub(crate) fn problems(to: &[String]) -> Vec<(usize, String)> {
    to.iter()
        .enumerate()
        .filter_map(|(i, s)| slack_target(s).err().map(|e| (i, e)))
        .collect()
}

/// The same problems as config problems of the field `to`, for `validate`.
pub(crate) fn config_problems(to: &[String]) -> Vec<landfall_engine::ConfigProblem> {
    problems(to)
        .into_iter()
        .map(|(i, message)| landfall_engine::ConfigProblem {
            path: landfall_engine::Path::root().key("to").index(i),
            message,
        })
        .collect()
}

/// Refuses a rendered `to:` list holding anything but Slack targets (before anything is sent).
pub(crate) fn check(to: &[String]) -> Result<(), landfall_engine::StepError> {
    let bad = problems(to);
    if bad.is_empty() {
        return Ok(());
    }
    Err(landfall_engine::StepError::permanent(format!(
        "`to` holds what is not a Slack target: {}",
        bad.into_iter()
            .map(|(i, why)| format!("to[{i}]: {why}"))
            .collect::<Vec<_>>()
            .join("; ")
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_slack_shaped_strings_are_targets() {
        assert_eq!(
            slack_target("U0123ABCD"),
            Ok(SlackTarget::User("U0123ABCD".into()))
        );
        assert_eq!(
            slack_target("W0123ABCDEF"),
            Ok(SlackTarget::User("W0123ABCDEF".into()))
        );
        assert_eq!(
            slack_target("C0456EFGH"),
            Ok(SlackTarget::Channel("C0456EFGH".into()))
        );
        assert_eq!(
            slack_target("S0PLATFORM"),
            Ok(SlackTarget::Group("S0PLATFORM".into()))
        );
        assert_eq!(
            slack_target("#acme-onboarding_1"),
            Ok(SlackTarget::ChannelName("#acme-onboarding_1".into()))
        );
        for bad in [
            "U0123ABCD> <!channel",
            "Uabc",
            "U",
            "u0123abcd",
            "#Acme",
            "#",
            "#acme <!channel>",
            "<!channel>",
            "alice",
            "",
        ] {
            assert!(slack_target(bad).is_err(), "{bad}");
        }
        assert!(slack_target(&format!("#{}", "a".repeat(81))).is_err());
        assert_eq!(problems(&["C0456EFGH".into(), "x".into()]).len(), 1);
    }
}
