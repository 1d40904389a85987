//! The room summary of `/sync` (`m.heroes`, `m.joined_member_count`,
//! `m.invited_member_count`): pure, over the room's current members.

use serde_json::{Value, json};

/// How many heroes a summary names.
const HEROES: usize = 5;

/// `members`: (user ID, membership, position of their membership event).
pub(crate) fn summary(members: &[(String, String, u64)], user_id: &str) -> Value {
    let joined = members.iter().filter(|(_, m, _)| m == "join").count();
    let invited = members.iter().filter(|(_, m, _)| m == "invite").count();
    let mut others: Vec<&(String, String, u64)> =
        members.iter().filter(|(u, _, _)| u != user_id).collect();
    others.sort_by_key(|(_, _, offset)| *offset);
    // Members and invitees first; only when there are none, those who left.
    let present: Vec<&str> = others
        .iter()
        .filter(|(_, m, _)| m == "join" || m == "invite")
        .map(|(u, _, _)| u.as_str())
        .collect();
    let heroes: Vec<&str> = if present.is_empty() {
        others
            .iter()
            .map(|(u, _, _)| u.as_str())
            .take(HEROES)
            .collect()
    } else {
        present.into_iter().take(HEROES).collect()
    };
    json!({
        "m.heroes": heroes,
        "m.joined_member_count": joined,
        "m.invited_member_count": invited,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(user: &str, membership: &str, offset: u64) -> (String, String, u64) {
        (user.into(), membership.into(), offset)
    }

    #[test]
    fn counts_and_heroes() {
        let members = vec![
            member("@me:x", "join", 1),
            member("@b:x", "join", 3),
            member("@a:x", "invite", 2),
            member("@gone:x", "leave", 4),
        ];
        let s = summary(&members, "@me:x");
        assert_eq!(s["m.joined_member_count"], 2);
        assert_eq!(s["m.invited_member_count"], 1);
        assert_eq!(s["m.heroes"], json!(["@a:x", "@b:x"]));
        let alone = vec![member("@me:x", "join", 1), member("@gone:x", "leave", 4)];
        assert_eq!(summary(&alone, "@me:x")["m.heroes"], json!(["@gone:x"]));
        let crowd: Vec<_> = (0..9)
            .map(|i| member(&format!("@u{i}:x"), "join", i))
            .collect();
        assert_eq!(
            summary(&crowd, "@me:x")["m.heroes"]
                .as_array()
                .map(Vec::len),
            Some(5)
        );
    }
}
