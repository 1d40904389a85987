//! Sync tokens are log positions: for each partition of `roomserver.output`,
//! the offset of the next record the response does not yet reflect. Any
//! syncapi replica can serve a token, because it names a place in the log
//! rather than a counter private to one database. Format: `s<o0>_<o1>_...`.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct SyncToken {
    pub(crate) offsets: Vec<u64>,
}

/// A token that does not parse or does not fit this deployment's partitions.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid token")]
pub(crate) struct InvalidToken;

impl SyncToken {
    pub(crate) fn new(offsets: Vec<u64>) -> Self {
        SyncToken { offsets }
    }

    pub(crate) fn parse(text: &str, partitions: usize) -> Result<SyncToken, InvalidToken> {
        let body = text.strip_prefix('s').ok_or(InvalidToken)?;
        let offsets = body
            .split('_')
            .map(|part| part.parse::<u64>().map_err(|_| InvalidToken))
            .collect::<Result<Vec<_>, _>>()?;
        if offsets.len() != partitions {
            return Err(InvalidToken);
        }
        Ok(SyncToken { offsets })
    }

    pub(crate) fn offset(&self, partition: u32) -> u64 {
        self.offsets.get(partition as usize).copied().unwrap_or(0)
    }

    /// The same token with one partition's offset replaced.
    pub(crate) fn with(&self, partition: u32, offset: u64) -> SyncToken {
        let mut offsets = self.offsets.clone();
        if let Some(slot) = offsets.get_mut(partition as usize) {
            *slot = offset;
        }
        SyncToken { offsets }
    }

    /// Whether every partition of `self` is at or beyond `other`.
    pub(crate) fn covers(&self, other: &SyncToken) -> bool {
        other
            .offsets
            .iter()
            .enumerate()
            .all(|(p, o)| self.offsets.get(p).copied().unwrap_or(0) >= *o)
    }
}

impl fmt::Display for SyncToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("s")?;
        for (i, offset) in self.offsets.iter().enumerate() {
            if i > 0 {
                f.write_str("_")?;
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
        let token = SyncToken::new(vec![3, 0, 17, 2]);
        assert_eq!(token.to_string(), "s3_0_17_2");
        assert_eq!(SyncToken::parse("s3_0_17_2", 4), Ok(token.clone()));
        assert_eq!(SyncToken::parse("s3_0_17", 4), Err(InvalidToken));
        assert_eq!(SyncToken::parse("x3_0_17_2", 4), Err(InvalidToken));
        assert_eq!(SyncToken::parse("s3_-1_17_2", 4), Err(InvalidToken));
        assert_eq!(SyncToken::parse("", 4), Err(InvalidToken));
        assert_eq!(token.with(1, 9).to_string(), "s3_9_17_2");
        assert!(token.with(1, 9).covers(&token));
        assert!(!token.covers(&token.with(1, 9)));
    }
}
