//! Which membership events a device was already sent, for lazy-loading
//! members in `/sync` without `include_redundant_members`: a member whose
//! membership event the client holds is not sent again. Kept per device in
//! memory, bounded; forgotten on an initial sync. A device whose entry is
//! gone (evicted, restarted, or served by another replica) is sent its
//! members again, which the spec allows: redundant, never missing.

use std::collections::HashMap;
use std::sync::Mutex;

use ganglion_base::bounded::Bounded;

/// Devices remembered.
const DEVICES: usize = 10_000;
/// Membership events remembered per device; past it the device starts over.
const PER_DEVICE: usize = 2_000;

/// (room ID, member) → the membership event's ID last sent.
type Sent = HashMap<(String, String), String>;

pub(crate) struct LazyMembers {
    devices: Mutex<Bounded<(String, String), Sent>>,
}

impl Default for LazyMembers {
    fn default() -> Self {
        LazyMembers {
            devices: Mutex::new(Bounded::new(DEVICES)),
        }
    }
}

impl LazyMembers {
    fn key(user_id: &str, device_id: &str) -> (String, String) {
        (user_id.to_owned(), device_id.to_owned())
    }

    /// An initial sync: the client starts from nothing.
    pub(crate) fn forget(&self, user_id: &str, device_id: &str) {
        self.lock().remove(&Self::key(user_id, device_id));
    }

    /// Whether the device was sent this membership event of `member`.
    pub(crate) fn was_sent(
        &self,
        (user_id, device_id): (&str, &str),
        room_id: &str,
        member: &str,
        event_id: &str,
    ) -> bool {
        self.lock()
            .get_mut(&Self::key(user_id, device_id))
            .and_then(|sent| sent.get(&(room_id.to_owned(), member.to_owned())))
            .is_some_and(|sent| sent == event_id)
    }

    /// Remembers membership events sent: (member, event ID).
    pub(crate) fn record<'a>(
        &self,
        (user_id, device_id): (&str, &str),
        room_id: &str,
        sent: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) {
        let mut devices = self.lock();
        let key = Self::key(user_id, device_id);
        if devices.get_mut(&key).is_none() {
            devices.insert(key.clone(), Sent::new());
        }
        let Some(entry) = devices.get_mut(&key) else {
            return;
        };
        for (member, event_id) in sent {
            if entry.len() >= PER_DEVICE {
                entry.clear();
            }
            entry.insert((room_id.to_owned(), member.to_owned()), event_id.to_owned());
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Bounded<(String, String), Sent>> {
        self.devices.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_per_device_and_room_until_an_initial_sync() {
        let members = LazyMembers::default();
        let device = ("@a:x", "D1");
        assert!(!members.was_sent(device, "!r:x", "@b:x", "$1"));
        members.record(device, "!r:x", [("@b:x", "$1")]);
        assert!(members.was_sent(device, "!r:x", "@b:x", "$1"));
        // Another event of the member, another room, another device.
        assert!(!members.was_sent(device, "!r:x", "@b:x", "$2"));
        assert!(!members.was_sent(device, "!s:x", "@b:x", "$1"));
        assert!(!members.was_sent(("@a:x", "D2"), "!r:x", "@b:x", "$1"));
        members.forget("@a:x", "D1");
        assert!(!members.was_sent(device, "!r:x", "@b:x", "$1"));
    }
}
