//! Sync tokens are log positions: for each stream (a consumed topic) and
//! each of its partitions, the offset of the next record the response does
//! not yet reflect. Any syncapi replica can serve a token, because it names
//! a place in the log rather than a counter private to one database.
//!
//! Format: `s` then one group per stream in [`Stream::ALL`] order, groups
//! separated by `.`, offsets within a group by `_`: `s4_0_9_1.0_0_2_0…`.
//! A token with fewer groups (from a build that consumed fewer topics)
//! reads the missing streams from their start.

use std::fmt;

use ganglion_api::topics::Topics;

/// A topic the syncapi consumes, in the order its offsets appear in tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Stream {
    Room,
    Typing,
    Receipt,
    Presence,
    ToDevice,
    AccountData,
    KeyChanges,
}

impl Stream {
    pub(crate) const ALL: [Stream; 7] = [
        Stream::Room,
        Stream::Typing,
        Stream::Receipt,
        Stream::Presence,
        Stream::ToDevice,
        Stream::AccountData,
        Stream::KeyChanges,
    ];

    /// The name its positions are stored under.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Stream::Room => "room",
            Stream::Typing => "typing",
            Stream::Receipt => "receipt",
            Stream::Presence => "presence",
            Stream::ToDevice => "to_device",
            Stream::AccountData => "account_data",
            Stream::KeyChanges => "key_changes",
        }
    }

    pub(crate) fn from_name(name: &str) -> Option<Stream> {
        Stream::ALL.into_iter().find(|s| s.name() == name)
    }

    pub(crate) fn topic(self, topics: &Topics) -> &str {
        match self {
            Stream::Room => &topics.roomserver_output,
            Stream::Typing => &topics.edu_typing,
            Stream::Receipt => &topics.edu_receipt,
            Stream::Presence => &topics.edu_presence,
            Stream::ToDevice => &topics.edu_to_device,
            Stream::AccountData => &topics.userapi_account_data,
            Stream::KeyChanges => &topics.keyserver_key_changes,
        }
    }

    pub(crate) fn from_topic(topics: &Topics, topic: &str) -> Option<Stream> {
        Stream::ALL.into_iter().find(|s| s.topic(topics) == topic)
    }

    fn index(self) -> usize {
        self as usize
    }

    /// Where a partition of this stream sits in a stream-major positions
    /// vector (tokens, the service's consumed positions); `None` past the
    /// deployment's partitions.
    pub(crate) fn slot(self, partition: u32, partitions: usize) -> Option<usize> {
        ((partition as usize) < partitions).then(|| self.index() * partitions + partition as usize)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct SyncToken {
    /// Stream-major: `offsets[stream * partitions + partition]`.
    offsets: Vec<u64>,
    partitions: usize,
}

/// A token that does not parse or does not fit this deployment's partitions.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid token")]
pub(crate) struct InvalidToken;

impl SyncToken {
    /// A token from a stream-major offsets vector of `Stream::ALL.len() * partitions`.
    pub(crate) fn new(offsets: Vec<u64>, partitions: usize) -> Self {
        SyncToken {
            offsets,
            partitions,
        }
    }

    pub(crate) fn parse(text: &str, partitions: usize) -> Result<SyncToken, InvalidToken> {
        let body = text.strip_prefix('s').ok_or(InvalidToken)?;
        let groups: Vec<&str> = body.split('.').collect();
        if groups.len() > Stream::ALL.len() || partitions == 0 {
            return Err(InvalidToken);
        }
        let mut offsets = vec![0; Stream::ALL.len() * partitions];
        for (stream, group) in groups.iter().enumerate() {
            let parsed = group
                .split('_')
                .map(|part| part.parse::<u64>().map_err(|_| InvalidToken))
                .collect::<Result<Vec<_>, _>>()?;
            if parsed.len() != partitions {
                return Err(InvalidToken);
            }
            offsets[stream * partitions..(stream + 1) * partitions].copy_from_slice(&parsed);
        }
        Ok(SyncToken {
            offsets,
            partitions,
        })
    }

    /// The offset of a partition of `roomserver.output`.
    pub(crate) fn offset(&self, partition: u32) -> u64 {
        self.stream_offset(Stream::Room, partition)
    }

    pub(crate) fn stream_offset(&self, stream: Stream, partition: u32) -> u64 {
        stream
            .slot(partition, self.partitions)
            .and_then(|slot| self.offsets.get(slot).copied())
            .unwrap_or(0)
    }

    /// The lowest offset of `stream` over its partitions: a bound for
    /// queries that span partitions (rows are then cut per partition).
    pub(crate) fn lowest(&self, stream: Stream) -> u64 {
        (0..self.partitions as u32)
            .map(|p| self.stream_offset(stream, p))
            .min()
            .unwrap_or(0)
    }

    /// Whether any partition of `stream` is further on in `self` than in
    /// `since`: nothing of the stream falls between the two otherwise.
    pub(crate) fn moved_past(&self, since: &SyncToken, stream: Stream) -> bool {
        (0..self.partitions as u32)
            .any(|p| self.stream_offset(stream, p) > since.stream_offset(stream, p))
    }

    /// The same token with one room partition's offset replaced.
    pub(crate) fn with(&self, partition: u32, offset: u64) -> SyncToken {
        self.with_stream(Stream::Room, partition, offset)
    }

    pub(crate) fn with_stream(&self, stream: Stream, partition: u32, offset: u64) -> SyncToken {
        let mut token = self.clone();
        if let Some(slot) = stream
            .slot(partition, self.partitions)
            .and_then(|slot| token.offsets.get_mut(slot))
        {
            *slot = offset;
        }
        token
    }

    /// Whether every position of `self` is at or beyond `other`.
    pub(crate) fn covers(&self, other: &SyncToken) -> bool {
        other
            .offsets
            .iter()
            .enumerate()
            .all(|(i, o)| self.offsets.get(i).copied().unwrap_or(0) >= *o)
    }
}

impl fmt::Display for SyncToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("s")?;
        for (i, offset) in self.offsets.iter().enumerate() {
            if i > 0 {
                f.write_str(if i % self.partitions.max(1) == 0 {
                    "."
                } else {
                    "_"
                })?;
            }
            write!(f, "{offset}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_garbage() {
        let mut offsets = vec![0; Stream::ALL.len() * 2];
        offsets[0] = 3;
        offsets[1] = 17;
        offsets[5] = 9;
        let token = SyncToken::new(offsets, 2);
        assert_eq!(token.to_string(), "s3_17.0_0.0_9.0_0.0_0.0_0.0_0");
        assert_eq!(SyncToken::parse(&token.to_string(), 2), Ok(token.clone()));
        assert_eq!(token.offset(1), 17);
        assert_eq!(token.stream_offset(Stream::Receipt, 1), 9);
        // A token of an older build: the missing streams read from the start.
        let old = SyncToken::parse("s3_17", 2).expect("old token");
        assert_eq!(old.offset(0), 3);
        assert_eq!(old.stream_offset(Stream::Receipt, 1), 0);
        assert!(token.covers(&old));
        for bad in [
            "s3_17_2",
            "x3_17",
            "s3_-1",
            "",
            "s",
            "s3_17.1",
            "s1_1.1_1.1_1.1_1.1_1.1_1.1_1.1_1",
        ] {
            assert_eq!(SyncToken::parse(bad, 2), Err(InvalidToken), "{bad}");
        }
        assert_eq!(token.with(1, 9).offset(1), 9);
        assert!(token.with(1, 90).covers(&token));
        assert!(!token.covers(&token.with_stream(Stream::ToDevice, 0, 4)));
    }
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::{Stream, SyncToken};

    proptest! {
        /// Any text a client sends as a token is parsed or refused, never
        /// a panic; one that parses prints back to itself.
        #[test]
        fn any_text_is_parsed_or_refused(text in ".{0,200}", partitions in 0_usize..9) {
            if let Ok(token) = SyncToken::parse(&text, partitions) {
                prop_assert_eq!(SyncToken::parse(&token.to_string(), partitions), Ok(token));
            }
        }

        /// Tokens shaped like ours, with any digits and separators.
        #[test]
        fn token_shaped_text_is_parsed_or_refused(text in "s[0-9_.]{0,80}", partitions in 1_usize..5) {
            let _ = SyncToken::parse(&text, partitions);
        }

        /// Every token we issue parses back to itself.
        #[test]
        fn issued_tokens_round_trip(
            partitions in 1_usize..9,
            seed in proptest::collection::vec(any::<u64>(), 64),
        ) {
            let offsets: Vec<u64> = seed.into_iter().take(Stream::ALL.len() * partitions).collect();
            prop_assume!(offsets.len() == Stream::ALL.len() * partitions);
            let token = SyncToken::new(offsets, partitions);
            prop_assert_eq!(SyncToken::parse(&token.to_string(), partitions), Ok(token));
        }
    }
}
