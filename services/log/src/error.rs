/// What can go wrong talking to the log.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// Reading or writing the embedded log's files failed.
    #[error("log storage I/O failed")]
    Io(#[from] std::io::Error),
    /// The embedded log found a record it cannot decode (not a torn tail).
    #[error("corrupt record in {topic}/{partition} at byte {at}")]
    Corrupt {
        topic: String,
        partition: u32,
        at: u64,
    },
    /// The topic does not exist.
    #[error("unknown topic {0}")]
    UnknownTopic(String),
    /// The Kafka client reported an error.
    #[error("kafka: {0}")]
    Kafka(String),
    /// A topic or group name the log cannot store (Kafka's rule: 1 to 249 of
    /// `[A-Za-z0-9._-]`, not `.` or `..`); the embedded log uses names as file names.
    #[error("invalid topic or group name {0:?}")]
    InvalidName(String),
    /// The record is larger than the log accepts.
    #[error("record of {0} bytes is too large")]
    RecordTooLarge(usize),
    /// Another `EmbeddedLog` (in this or another process) has the directory open.
    #[error("log directory {0} is already open")]
    DirectoryInUse(std::path::PathBuf),
    /// The log is shutting down.
    #[error("log closed")]
    Closed,
}

impl LogError {
    /// Transient errors are worth retrying with backoff; the rest are not.
    pub fn is_transient(&self) -> bool {
        matches!(self, LogError::Kafka(_))
    }
}
