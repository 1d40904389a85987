//! History visibility: whether a user may see an event, from the room's
//! `m.room.history_visibility` when the event was sent and the user's
//! membership then and now. Pure; the caller loads the user's membership
//! history of the room.

use crate::filter::Ignored;
use crate::storage::EventRow;

/// One user reading one room.
pub(crate) struct Reader<'a> {
    pub(crate) user_id: &'a str,
    /// (offset of the event that set it, membership), oldest first.
    pub(crate) history: &'a [(u64, String)],
    /// The users they ignore: what those sent but state is not shown.
    pub(crate) ignored: Ignored,
}

impl Reader<'_> {
    /// The membership in force just before the event at `offset`.
    fn membership_before(&self, offset: u64) -> Option<&str> {
        self.history
            .iter()
            .take_while(|(at, _)| *at < offset)
            .last()
            .map(|(_, m)| m.as_str())
    }

    /// The membership now.
    pub(crate) fn current(&self) -> Option<&str> {
        self.history.last().map(|(_, m)| m.as_str())
    }

    /// Whether the user may see `event`:
    /// - after forgetting the room, only world-readable history;
    /// - their own membership events, always;
    /// - anything sent while they were joined;
    /// - `world_readable`: anything;
    /// - `shared`: anything, while they are joined now;
    /// - `invited`: also what was sent while they were invited;
    /// - `joined`: nothing more.
    pub(crate) fn may_see(&self, event: &EventRow) -> bool {
        if self.ignored.hides(event) {
            return false;
        }
        // A forgotten room keeps only what anyone may read.
        if self.current() == Some("forgotten") {
            return event.history_visibility == "world_readable";
        }
        if event.event_type == "m.room.member" && event.state_key.as_deref() == Some(self.user_id) {
            return true;
        }
        let then = self.membership_before(event.offset);
        if then == Some("join") {
            return true;
        }
        match event.history_visibility.as_str() {
            "world_readable" => true,
            "shared" => self.current() == Some("join"),
            "invited" => then == Some("invite"),
            _ => false,
        }
    }

    /// Whether every event in a window is visible without looking: the
    /// user is joined now and nothing in it was sent under `joined` or
    /// `invited` visibility.
    pub(crate) fn sees_all(current: Option<&str>, events: &[EventRow]) -> bool {
        current == Some("join")
            && events
                .iter()
                .all(|e| matches!(e.history_visibility.as_str(), "shared" | "world_readable"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(offset: u64, visibility: &str) -> EventRow {
        EventRow {
            offset,
            room_id: "!r:x".into(),
            sender: "@a:x".into(),
            history_visibility: visibility.into(),
            event_id: format!("$e{offset}"),
            event_type: "m.room.message".into(),
            state_key: None,
            json: "{}".into(),
            device_id: String::new(),
            transaction_id: String::new(),
        }
    }

    fn history(entries: &[(u64, &str)]) -> Vec<(u64, String)> {
        entries.iter().map(|(o, m)| (*o, (*m).to_owned())).collect()
    }

    #[test]
    fn each_visibility_as_the_spec_describes() {
        // Bob is invited at 10, joins at 20, leaves at 30.
        let bob = history(&[(10, "invite"), (20, "join"), (30, "leave")]);
        let reader = Reader {
            user_id: "@bob:x",
            history: &bob,
            ignored: Default::default(),
        };
        // While joined: every visibility.
        for visibility in ["joined", "invited", "shared", "world_readable"] {
            assert!(reader.may_see(&event(25, visibility)), "{visibility}");
        }
        // Before the invite.
        assert!(!reader.may_see(&event(5, "joined")));
        assert!(!reader.may_see(&event(5, "invited")));
        assert!(
            !reader.may_see(&event(5, "shared")),
            "shared needs him joined now"
        );
        assert!(reader.may_see(&event(5, "world_readable")));
        // While invited.
        assert!(reader.may_see(&event(15, "invited")));
        assert!(!reader.may_see(&event(15, "joined")));
        // After leaving.
        assert!(!reader.may_see(&event(35, "shared")));
        assert!(!reader.may_see(&event(35, "joined")));
        assert!(reader.may_see(&event(35, "world_readable")));

        // Carol joined at 20 and is still there: shared history is hers.
        let carol = history(&[(20, "join")]);
        let reader = Reader {
            user_id: "@carol:x",
            history: &carol,
            ignored: Default::default(),
        };
        assert!(reader.may_see(&event(5, "shared")));
        assert!(!reader.may_see(&event(5, "joined")));
        assert!(!reader.may_see(&event(5, "invited")));

        // A stranger sees only world-readable history, and their own
        // membership events.
        let reader = Reader {
            user_id: "@eve:x",
            history: &[],
            ignored: Default::default(),
        };
        assert!(!reader.may_see(&event(5, "shared")));
        assert!(reader.may_see(&event(5, "world_readable")));
        let mut own = event(40, "joined");
        own.event_type = "m.room.member".into();
        own.state_key = Some("@eve:x".into());
        assert!(reader.may_see(&own));

        // Bob forgets the room at 40: even what he saw while joined is gone.
        let forgot = history(&[(20, "join"), (30, "leave"), (40, "forgotten")]);
        let reader = Reader {
            user_id: "@bob:x",
            history: &forgot,
            ignored: Default::default(),
        };
        assert!(!reader.may_see(&event(25, "joined")));
        assert!(!reader.may_see(&event(25, "shared")));
        assert!(reader.may_see(&event(25, "world_readable")));

        // Carol ignores Alice: her messages are hidden, her state is not.
        let ignored = Ignored::new(Some(std::sync::Arc::new(
            ["@a:x".to_owned()].into_iter().collect(),
        )));
        let reader = Reader {
            user_id: "@carol:x",
            history: &carol,
            ignored,
        };
        assert!(!reader.may_see(&event(25, "shared")));
        let mut topic = event(25, "shared");
        topic.event_type = "m.room.topic".into();
        topic.state_key = Some(String::new());
        assert!(reader.may_see(&topic));
    }

    #[test]
    fn a_joined_reader_of_shared_history_needs_no_lookup() {
        let events = vec![event(1, "shared"), event(2, "world_readable")];
        assert!(Reader::sees_all(Some("join"), &events));
        assert!(!Reader::sees_all(Some("leave"), &events));
        assert!(!Reader::sees_all(Some("join"), &[event(3, "joined")]));
    }
}
