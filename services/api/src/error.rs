//! Typed errors that cross service boundaries. In the polylith they travel
//! inside the gRPC status details as a `common.ApiError`, so a caller gets
//! back exactly the variant the service returned, never a bare string.

use ganglion_base::MatrixError;
use prost::Message;

use crate::proto::common::{ApiError as WireError, ErrorKind};

/// What a service API call can fail with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// The thing asked about does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// The caller may not do this (e.g. the auth rules rejected the event).
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// The request is malformed or names something invalid.
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// A signature the request carries does not verify.
    #[error("invalid signature: {0}")]
    InvalidSignature(String),
    /// Something the request needs is neither in it nor stored.
    #[error("missing: {0}")]
    MissingParam(String),
    /// Wrong credentials or an unknown access token.
    #[error("unknown or invalid access token")]
    UnknownToken,
    /// The user ID is taken.
    #[error("user ID already taken")]
    UserInUse,
    /// The access token expired: a refresh token renews it (the client
    /// is logged out softly).
    #[error("the access token expired")]
    TokenExpired,
    /// The account was deactivated.
    #[error("the account is deactivated")]
    UserDeactivated,
    /// The room alias is taken.
    #[error("room alias already taken")]
    RoomInUse,
    /// The event or request is larger than allowed.
    #[error("too large: {0}")]
    TooLarge(String),
    /// The room version is not one this server supports.
    #[error("unsupported room version {0}")]
    UnsupportedRoomVersion(String),
    /// The service did not answer in time.
    #[error("timed out")]
    Timeout,
    /// Too much asked too fast (a full queue): try again after this many
    /// milliseconds.
    #[error("limit exceeded: retry after {0} ms")]
    LimitExceeded(u64),
    /// The service cannot be reached or is not ready (transient: retry).
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The service failed (its database, its log).
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    /// A failed database call of `service`: `Unavailable` (a retry may
    /// work) when the database was busy or out of reach, else `Internal`.
    pub fn database(service: &str, error: &sqlx::Error) -> Self {
        if ganglion_base::database::is_transient(error) {
            ApiError::Unavailable(format!("{service} database: {error}"))
        } else {
            ApiError::Internal(format!("{service} storage: {error:?}"))
        }
    }

    pub fn internal(error: impl std::fmt::Display) -> Self {
        ApiError::Internal(error.to_string())
    }

    fn to_wire(&self) -> WireError {
        let (kind, message) = match self {
            ApiError::NotFound(m) => (ErrorKind::NotFound, m.clone()),
            ApiError::Forbidden(m) => (ErrorKind::Forbidden, m.clone()),
            ApiError::InvalidInput(m) => (ErrorKind::InvalidInput, m.clone()),
            ApiError::InvalidSignature(m) => (ErrorKind::InvalidSignature, m.clone()),
            ApiError::MissingParam(m) => (ErrorKind::MissingParam, m.clone()),
            ApiError::UnknownToken => (ErrorKind::UnknownToken, String::new()),
            ApiError::TokenExpired => (ErrorKind::TokenExpired, String::new()),
            ApiError::UserInUse => (ErrorKind::UserInUse, String::new()),
            ApiError::UserDeactivated => (ErrorKind::UserDeactivated, String::new()),
            ApiError::RoomInUse => (ErrorKind::RoomInUse, String::new()),
            ApiError::TooLarge(m) => (ErrorKind::TooLarge, m.clone()),
            ApiError::UnsupportedRoomVersion(m) => (ErrorKind::UnsupportedRoomVersion, m.clone()),
            ApiError::Timeout => (ErrorKind::Timeout, String::new()),
            ApiError::LimitExceeded(ms) => (ErrorKind::LimitExceeded, ms.to_string()),
            ApiError::Unavailable(m) => (ErrorKind::Unavailable, m.clone()),
            ApiError::Internal(m) => (ErrorKind::Internal, m.clone()),
        };
        WireError {
            kind: kind as i32,
            message,
        }
    }

    pub(crate) fn from_wire(wire: WireError) -> Self {
        let m = wire.message;
        match ErrorKind::try_from(wire.kind).unwrap_or(ErrorKind::Unspecified) {
            ErrorKind::NotFound => ApiError::NotFound(m),
            ErrorKind::Forbidden => ApiError::Forbidden(m),
            ErrorKind::InvalidInput => ApiError::InvalidInput(m),
            ErrorKind::InvalidSignature => ApiError::InvalidSignature(m),
            ErrorKind::MissingParam => ApiError::MissingParam(m),
            ErrorKind::UnknownToken => ApiError::UnknownToken,
            ErrorKind::TokenExpired => ApiError::TokenExpired,
            ErrorKind::UserInUse => ApiError::UserInUse,
            ErrorKind::UserDeactivated => ApiError::UserDeactivated,
            ErrorKind::RoomInUse => ApiError::RoomInUse,
            ErrorKind::TooLarge => ApiError::TooLarge(m),
            ErrorKind::UnsupportedRoomVersion => ApiError::UnsupportedRoomVersion(m),
            ErrorKind::Timeout => ApiError::Timeout,
            ErrorKind::LimitExceeded => ApiError::LimitExceeded(m.parse().unwrap_or(1_000)),
            ErrorKind::Unavailable => ApiError::Unavailable(m),
            ErrorKind::Internal | ErrorKind::Conflict | ErrorKind::Unspecified => {
                ApiError::Internal(m)
            }
        }
    }

    /// For the wire between replicas and in topic outcomes.
    pub fn into_wire(self) -> WireError {
        self.to_wire()
    }

    pub fn from_wire_error(wire: WireError) -> Self {
        Self::from_wire(wire)
    }
}

impl From<ApiError> for tonic::Status {
    fn from(error: ApiError) -> Self {
        let code = match &error {
            ApiError::NotFound(_) => tonic::Code::NotFound,
            ApiError::Forbidden(_) => tonic::Code::PermissionDenied,
            ApiError::InvalidInput(_)
            | ApiError::InvalidSignature(_)
            | ApiError::MissingParam(_)
            | ApiError::TooLarge(_)
            | ApiError::UnsupportedRoomVersion(_) => tonic::Code::InvalidArgument,
            ApiError::UnknownToken | ApiError::TokenExpired => tonic::Code::Unauthenticated,
            ApiError::UserDeactivated => tonic::Code::PermissionDenied,
            ApiError::UserInUse | ApiError::RoomInUse => tonic::Code::AlreadyExists,
            ApiError::Timeout => tonic::Code::DeadlineExceeded,
            ApiError::LimitExceeded(_) => tonic::Code::ResourceExhausted,
            ApiError::Unavailable(_) => tonic::Code::Unavailable,
            ApiError::Internal(_) => tonic::Code::Internal,
        };
        let details = error.to_wire().encode_to_vec();
        tonic::Status::with_details(code, error.to_string(), details.into())
    }
}

impl From<tonic::Status> for ApiError {
    fn from(status: tonic::Status) -> Self {
        if let Ok(wire) = WireError::decode(status.details())
            && wire.kind != ErrorKind::Unspecified as i32
        {
            return ApiError::from_wire(wire);
        }
        // No answer of the service's own: the call broke on the way (a
        // replica killed mid-call resets its streams, whatever code the
        // transport picks). Transient for whoever asked, never a 500.
        match status.code() {
            tonic::Code::DeadlineExceeded => ApiError::Timeout,
            _ => ApiError::Unavailable(format!("{}: {}", status.code(), status.message())),
        }
    }
}

impl From<ApiError> for MatrixError {
    fn from(error: ApiError) -> Self {
        use http::StatusCode;
        match error {
            ApiError::NotFound(m) => MatrixError::not_found(m),
            ApiError::Forbidden(m) => MatrixError::forbidden(m),
            ApiError::InvalidInput(m) => MatrixError::invalid_param(m),
            ApiError::InvalidSignature(m) => {
                MatrixError::new(StatusCode::BAD_REQUEST, "M_INVALID_SIGNATURE", m)
            }
            ApiError::MissingParam(m) => MatrixError::missing_param(m),
            ApiError::UnknownToken => MatrixError::unknown_token(),
            ApiError::TokenExpired => MatrixError::soft_logout(),
            ApiError::UserInUse => MatrixError::new(
                StatusCode::BAD_REQUEST,
                "M_USER_IN_USE",
                "User ID already taken",
            ),
            ApiError::UserDeactivated => MatrixError::new(
                StatusCode::FORBIDDEN,
                "M_USER_DEACTIVATED",
                "This account has been deactivated",
            ),
            ApiError::RoomInUse => MatrixError::new(
                StatusCode::BAD_REQUEST,
                "M_ROOM_IN_USE",
                "Room alias already taken",
            ),
            ApiError::TooLarge(m) => MatrixError::too_large(m),
            ApiError::UnsupportedRoomVersion(v) => MatrixError::new(
                StatusCode::BAD_REQUEST,
                "M_UNSUPPORTED_ROOM_VERSION",
                format!("Unsupported room version {v}"),
            ),
            ApiError::Timeout => MatrixError::unavailable("Timed out"),
            ApiError::LimitExceeded(ms) => MatrixError::limit_exceeded(ms),
            ApiError::Unavailable(m) => MatrixError::unavailable(m),
            ApiError::Internal(m) => {
                tracing::error!(error = %m, "internal error");
                MatrixError::unknown("Internal server error")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_variant_survives_grpc() {
        let all = [
            ApiError::NotFound("room".into()),
            ApiError::Forbidden("auth".into()),
            ApiError::InvalidInput("x".into()),
            ApiError::UnknownToken,
            ApiError::TokenExpired,
            ApiError::UserInUse,
            ApiError::UserDeactivated,
            ApiError::RoomInUse,
            ApiError::TooLarge("big".into()),
            ApiError::UnsupportedRoomVersion("99".into()),
            ApiError::Timeout,
            ApiError::Unavailable("down".into()),
            ApiError::Internal("db".into()),
        ];
        for error in all {
            let status: tonic::Status = error.clone().into();
            assert_eq!(ApiError::from(status), error);
        }
    }
}
