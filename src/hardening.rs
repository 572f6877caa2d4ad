//! Process hardening at start-up: the process's memory holds the master
//! key, every KEK, the MAC keys and the card numbers in flight, so it is
//! never written to a core dump, and other processes of the same user
//! cannot read it (`/proc/<pid>/mem`, `ptrace`).

/// Core dumps off (`RLIMIT_CORE` 0, hard limit too) and the process not
/// dumpable (`PR_SET_DUMPABLE` 0: no core dump even where a handler such
/// as systemd-coredump would take one, and its `/proc/<pid>` files belong
/// to root). Called first by every command. Off Linux, nothing.
pub fn forbid_memory_dumps() -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        use rustix::process::{DumpableBehavior, Resource, Rlimit};
        rustix::process::setrlimit(
            Resource::Core,
            Rlimit {
                current: Some(0),
                maximum: Some(0),
            },
        )
        .map_err(std::io::Error::from)?;
        rustix::process::set_dumpable_behavior(DumpableBehavior::NotDumpable)
            .map_err(std::io::Error::from)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[cfg(target_os = "linux")]
    #[test]
    fn memory_dumps_are_forbidden() {
        use rustix::process::{DumpableBehavior, Resource};
        super::forbid_memory_dumps().unwrap();
        let core = rustix::process::getrlimit(Resource::Core);
        assert_eq!((core.current, core.maximum), (Some(0), Some(0)));
        assert_eq!(
            rustix::process::dumpable_behavior().unwrap(),
            DumpableBehavior::NotDumpable
        );
    }
}
