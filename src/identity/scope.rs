//! What a key may call on the data plane.

/// One data-plane permission.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// `POST /v1/chat/completions`
    Chat,
    /// `POST /v1/completions`
    Completions,
    /// `POST /v1/embeddings`, `/v1/rerank`, `/v1/score`
    Embeddings,
    /// `POST /v1/audio/speech`, `/transcriptions`, `/translations`
    Audio,
    /// `GET /v1/models`
    Models,
}

impl Scope {
    pub const ALL: [Scope; 5] = [
        Scope::Chat,
        Scope::Completions,
        Scope::Embeddings,
        Scope::Audio,
        Scope::Models,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Chat => "chat",
            Scope::Completions => "completions",
            Scope::Embeddings => "embeddings",
            Scope::Audio => "audio",
            Scope::Models => "models",
        }
    }

    pub fn parse(s: &str) -> Option<Scope> {
        Scope::ALL.into_iter().find(|c| c.as_str() == s)
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

/// A set of scopes (a bit set: checked on every request).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Scopes(u8);

impl Scopes {
    pub fn all() -> Self {
        Scope::ALL.into_iter().collect()
    }

    pub fn contains(self, s: Scope) -> bool {
        self.0 & s.bit() != 0
    }

    pub fn names(self) -> Vec<String> {
        Scope::ALL
            .into_iter()
            .filter(|s| self.contains(*s))
            .map(|s| s.as_str().to_string())
            .collect()
    }

    /// From names; the first unknown name is the error.
    pub fn parse<'a>(names: impl IntoIterator<Item = &'a str>) -> Result<Self, String> {
        let mut set = Scopes::default();
        for n in names {
            let n = n.trim();
            if n.is_empty() {
                continue;
            }
            let s = Scope::parse(n).ok_or_else(|| n.to_string())?;
            set.0 |= s.bit();
        }
        Ok(set)
    }
}

impl FromIterator<Scope> for Scopes {
    fn from_iter<I: IntoIterator<Item = Scope>>(iter: I) -> Self {
        Scopes(iter.into_iter().fold(0, |acc, s| acc | s.bit()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scope_sets() {
        let s = Scopes::parse("chat,completions, embeddings".split(',')).unwrap();
        assert!(s.contains(Scope::Chat) && s.contains(Scope::Embeddings));
        assert!(!s.contains(Scope::Audio));
        assert_eq!(s.names(), ["chat", "completions", "embeddings"]);
        assert_eq!(Scopes::parse(["chat", "nope"]).unwrap_err(), "nope");
        assert_eq!(Scopes::all().names().len(), 5);
    }
}
