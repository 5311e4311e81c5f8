//! The library's error type: a failure status (100 and up) with a human explanation.

use crate::status::Status;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    pub status: Status,
    pub message: String,
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn invalid(message: impl Into<String>) -> Error {
        Error { status: Status::ErrInvalidArgument, message: message.into() }
    }
    pub fn store(message: impl Into<String>) -> Error {
        Error { status: Status::ErrStore, message: message.into() }
    }
    pub fn not_found(message: impl Into<String>) -> Error {
        Error { status: Status::ErrNotFound, message: message.into() }
    }
    pub fn internal(message: impl Into<String>) -> Error {
        Error { status: Status::ErrInternal, message: message.into() }
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.status.code(), self.message)
    }
}

impl std::error::Error for Error {}
