//! What a handler builds from a live section of the configuration (the pod provider's client,
//! the admin credentials): kept with the section it came from, built again the first time it
//! is asked for after a reload changed that section.

use arc_swap::ArcSwap;
use std::sync::Arc;

/// `T` built from the section `C`.
pub struct Derived<C, T> {
    slot: ArcSwap<(C, Arc<T>)>,
}

impl<C: PartialEq + Clone, T> Derived<C, T> {
    pub fn new(section: C, built: T) -> Self {
        Self {
            slot: ArcSwap::from_pointee((section, Arc::new(built))),
        }
    }

    /// The value for `section` as it is now: the one kept when the section has not changed,
    /// else built again. A build that fails (the reload checked it, so only the environment
    /// can have changed) keeps the previous value, and says so in the log.
    pub fn get<E: std::fmt::Display>(
        &self,
        section: &C,
        what: &str,
        build: impl FnOnce(&C) -> Result<T, E>,
    ) -> Arc<T> {
        let kept = self.slot.load();
        if kept.0 == *section {
            return kept.1.clone();
        }
        match build(section) {
            Ok(t) => {
                let t = Arc::new(t);
                self.slot.store(Arc::new((section.clone(), t.clone())));
                tracing::info!(what, "rebuilt from the reloaded configuration");
                t
            }
            Err(e) => {
                tracing::error!(what, error = %e, "not rebuilt from the reloaded configuration: the previous one stays");
                kept.1.clone()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_again_only_when_the_section_changed_and_kept_when_that_fails() {
        let d = Derived::new(1u32, "one".to_string());
        let build = |c: &u32| match c {
            2 => Ok("two".to_string()),
            _ => Err("no"),
        };
        assert_eq!(
            *d.get(&1, "x", |_| -> Result<String, &str> { panic!("kept") }),
            "one"
        );
        assert_eq!(*d.get(&2, "x", build), "two");
        assert_eq!(
            *d.get(&2, "x", |_| -> Result<String, &str> { panic!("kept") }),
            "two"
        );
        assert_eq!(
            *d.get(&3, "x", build),
            "two",
            "a failed build keeps the value"
        );
    }
}
