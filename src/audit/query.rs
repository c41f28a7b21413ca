//! Selecting audit records: a time range and exact or partial matches.

use super::{AuditRecord, Outcome};
use crate::usage::query::StatusFilter;

/// What a query selects.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub from_ms: u64,
    pub to_ms: u64,
    /// Exactly this actor.
    pub actor: Option<String>,
    /// Exactly this action, or with a trailing `.*` every action of the family (`key.*`).
    pub action: Option<String>,
    /// Targets containing this text.
    pub target: Option<String>,
    pub outcome: Option<Outcome>,
    pub status: Option<StatusFilter>,
}

impl Filter {
    pub fn matches(&self, r: &AuditRecord) -> bool {
        r.ts_ms >= self.from_ms
            && r.ts_ms < self.to_ms
            && self.actor.as_ref().is_none_or(|a| *a == r.actor)
            && self
                .action
                .as_ref()
                .is_none_or(|a| match a.strip_suffix(".*") {
                    Some(family) => r
                        .action
                        .strip_prefix(family)
                        .is_some_and(|rest| rest.starts_with('.')),
                    None => *a == r.action,
                })
            && self.target.as_ref().is_none_or(|t| {
                r.target
                    .as_deref()
                    .is_some_and(|have| have.contains(t.as_str()))
            })
            && self.outcome.is_none_or(|o| o == r.outcome)
            && self.status.is_none_or(|s| s.matches(r.status))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(
        ts_ms: u64,
        actor: &str,
        action: &str,
        target: Option<&str>,
        status: u16,
    ) -> AuditRecord {
        AuditRecord {
            ts_ms,
            actor: actor.into(),
            action: action.into(),
            target: target.map(Into::into),
            outcome: Outcome::of(status),
            status,
            error: None,
            error_id: None,
            method: "POST".into(),
            path: "/admin/x".into(),
            address: None,
        }
    }

    #[test]
    fn filters_select_by_every_field() {
        let records = [
            rec(10, "ops", "key.create", Some("ak_1"), 201),
            rec(20, "ops", "key.revoke", Some("ak_1"), 404),
            rec(30, "ci", "registry.add", Some("model=m url=http://a"), 201),
            rec(40, "ci", "keyring.x", None, 200),
            rec(50, "ops", "config.reload", None, 422),
        ];
        let count = |f: Filter| {
            // An unset end means "no end" here.
            let f = Filter {
                to_ms: if f.to_ms == 0 { u64::MAX } else { f.to_ms },
                ..f
            };
            records.iter().filter(|r| f.matches(r)).count()
        };
        assert_eq!(count(Filter::default()), 5);
        assert_eq!(
            count(Filter {
                from_ms: 20,
                to_ms: 40,
                ..Default::default()
            }),
            2
        );
        assert_eq!(
            count(Filter {
                actor: Some("ci".into()),
                ..Default::default()
            }),
            2
        );
        assert_eq!(
            count(Filter {
                action: Some("key.create".into()),
                ..Default::default()
            }),
            1
        );
        assert_eq!(
            count(Filter {
                action: Some("key.*".into()),
                ..Default::default()
            }),
            2,
            "not keyring.x"
        );
        assert_eq!(
            count(Filter {
                target: Some("ak_1".into()),
                ..Default::default()
            }),
            2
        );
        assert_eq!(
            count(Filter {
                target: Some("url=http://a".into()),
                ..Default::default()
            }),
            1
        );
        assert_eq!(
            count(Filter {
                outcome: Some(Outcome::Failure),
                ..Default::default()
            }),
            2
        );
        assert_eq!(
            count(Filter {
                outcome: Some(Outcome::Success),
                ..Default::default()
            }),
            3
        );
        assert_eq!(
            count(Filter {
                status: StatusFilter::parse("4xx"),
                ..Default::default()
            }),
            2
        );
        assert_eq!(
            count(Filter {
                status: StatusFilter::parse("201"),
                ..Default::default()
            }),
            2
        );
        assert_eq!(Outcome::of(399), Outcome::Success);
        assert_eq!(Outcome::of(400), Outcome::Failure);
        assert_eq!(Outcome::parse("failure"), Some(Outcome::Failure));
        assert_eq!(Outcome::parse("ok"), None);
    }
}
