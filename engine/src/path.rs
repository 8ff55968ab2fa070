//! A location inside a parsed document, independent of its syntax (`steps[2].with.argv`).
//!
//! Every diagnostic names the offending value by a [`Path`]; the [`crate::source::SourceMap`]
//! of the file turns it into a byte span. This keeps the checks free of YAML/TOML details.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Seg {
    Key(String),
    Index(usize),
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Path(pub Vec<Seg>);

impl Path {
    pub fn root() -> Self {
        Path(Vec::new())
    }

    pub fn key(&self, k: impl Into<String>) -> Self {
        let mut p = self.clone();
        p.0.push(Seg::Key(k.into()));
        p
    }

    pub fn index(&self, i: usize) -> Self {
        let mut p = self.clone();
        p.0.push(Seg::Index(i));
        p
    }

    pub fn join(&self, other: &Path) -> Self {
        let mut p = self.clone();
        p.0.extend(other.0.iter().cloned());
        p
    }

    pub fn parent(&self) -> Option<Path> {
        if self.0.is_empty() {
            None
        } else {
            Some(Path(self.0[..self.0.len() - 1].to_vec()))
        }
    }

    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }

    /// Converts a `serde_path_to_error` path (`steps[0].with.argv`) into ours.
    pub fn from_serde(p: &serde_path_to_error::Path) -> Self {
        use serde_path_to_error::Segment;
        let mut out = Path::root();
        for seg in p.iter() {
            match seg {
                Segment::Seq { index } => out.0.push(Seg::Index(*index)),
                Segment::Map { key } => out.0.push(Seg::Key(key.clone())),
                Segment::Enum { variant } => out.0.push(Seg::Key(variant.clone())),
                Segment::Unknown => {}
            }
        }
        out
    }
}

impl Path {
    /// Reads a path as [`Path`]'s `Display` writes it (`accounts[1].email`, `tags["a.b"]`);
    /// what it cannot read ends the path there (its nearest readable ancestor is then used).
    pub fn parse(text: &str) -> Path {
        let mut out = Path::root();
        let b = text.as_bytes();
        let mut i = 0;
        while i < b.len() {
            match b[i] {
                b'.' => i += 1,
                b'[' if b.get(i + 1) == Some(&b'"') => {
                    // A quoted key: a JSON-compatible string literal up to `"]`.
                    let Some(end) = text[i + 1..].find("\"]").map(|e| i + 1 + e + 1) else {
                        break;
                    };
                    match serde_json::from_str::<String>(&text[i + 1..end]) {
                        Ok(k) => out.0.push(Seg::Key(k)),
                        Err(_) => break,
                    }
                    i = end + 1;
                }
                b'[' => {
                    let Some(end) = text[i..].find(']').map(|e| i + e) else {
                        break;
                    };
                    match text[i + 1..end].parse::<usize>() {
                        Ok(n) => out.0.push(Seg::Index(n)),
                        Err(_) => break,
                    }
                    i = end + 1;
                }
                _ => {
                    let end = text[i..].find(['.', '[']).map_or(text.len(), |e| i + e);
                    out.0.push(Seg::Key(text[i..end].to_string()));
                    i = end;
                }
            }
        }
        out
    }
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("(document)");
        }
        for (i, seg) in self.0.iter().enumerate() {
            match seg {
                Seg::Key(k) => {
                    let plain = !k.is_empty()
                        && k.chars()
                            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
                    if plain {
                        if i > 0 {
                            f.write_str(".")?;
                        }
                        f.write_str(k)?;
                    } else {
                        write!(f, "[{k:?}]")?;
                    }
                }
                Seg::Index(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_displayed_path_reads_back() {
        for p in [
            Path::root().key("accounts").index(1).key("email"),
            Path::root().key("tags").key("cost.center").key("x"),
            Path::root().key("regions").index(0),
            Path::root().key("a-b_c"),
        ] {
            assert_eq!(Path::parse(&p.to_string()), p, "{p}");
        }
        assert_eq!(Path::parse("a[x].b"), Path::root().key("a"));
    }

    #[test]
    fn displays_like_a_user_would_write_it() {
        let p = Path::root().key("steps").index(2).key("with").key("argv");
        assert_eq!(p.to_string(), "steps[2].with.argv");
        assert_eq!(
            Path::root().key("tags").key("a b").to_string(),
            "tags[\"a b\"]"
        );
        assert_eq!(Path::root().to_string(), "(document)");
    }
}
