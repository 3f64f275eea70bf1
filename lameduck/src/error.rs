//! The crate's error type.

use std::error::Error as StdError;
use std::fmt;
use std::io;

/// An error from setting up lameduck: installing signal handlers, binding
/// or inheriting listeners.
///
/// Opaque on purpose; ask it what it is with the `is_*` predicates, and find
/// the cause in [`source`](StdError::source).
pub struct Error {
    kind: ErrorKind,
    source: Option<Box<dyn StdError + Send + Sync>>,
}

#[derive(Debug)]
#[cfg_attr(not(feature = "http"), allow(dead_code))] // used by the HTTP server
enum ErrorKind {
    Signal,
    Bind(String),
    Listener(String),
    ControlSocket(String),
    PidFile(String),
    Handover(String),
    #[cfg_attr(not(feature = "tls"), allow(dead_code))]
    Tls(String),
    Stage(String),
}

impl Error {
    pub(crate) fn signal(e: io::Error) -> Self {
        Error {
            kind: ErrorKind::Signal,
            source: Some(Box::new(e)),
        }
    }

    #[cfg_attr(not(feature = "http"), allow(dead_code))] // used by the HTTP server
    pub(crate) fn bind(what: impl fmt::Display, e: io::Error) -> Self {
        Error {
            kind: ErrorKind::Bind(what.to_string()),
            source: Some(Box::new(e)),
        }
    }

    pub(crate) fn listener(
        what: impl fmt::Display,
        e: impl Into<Box<dyn StdError + Send + Sync>>,
    ) -> Self {
        Error {
            kind: ErrorKind::Listener(what.to_string()),
            source: Some(e.into()),
        }
    }

    #[cfg(unix)]
    pub(crate) fn control_socket(
        path: impl fmt::Display,
        e: impl Into<Box<dyn StdError + Send + Sync>>,
    ) -> Self {
        Error {
            kind: ErrorKind::ControlSocket(path.to_string()),
            source: Some(e.into()),
        }
    }

    #[cfg(unix)]
    #[cfg_attr(not(feature = "http"), allow(dead_code))] // used by restarts
    pub(crate) fn pid_file(path: impl fmt::Display, e: io::Error) -> Self {
        Error {
            kind: ErrorKind::PidFile(path.to_string()),
            source: Some(Box::new(e)),
        }
    }

    #[cfg(unix)]
    #[cfg_attr(not(feature = "http"), allow(dead_code))] // used by restarts
    pub(crate) fn handover(
        what: impl fmt::Display,
        e: impl Into<Box<dyn StdError + Send + Sync>>,
    ) -> Self {
        Error {
            kind: ErrorKind::Handover(what.to_string()),
            source: Some(e.into()),
        }
    }

    #[cfg(feature = "tls")]
    pub(crate) fn tls(
        what: impl fmt::Display,
        e: impl Into<Box<dyn StdError + Send + Sync>>,
    ) -> Self {
        Error {
            kind: ErrorKind::Tls(what.to_string()),
            source: Some(e.into()),
        }
    }

    pub(crate) fn stage(message: String) -> Self {
        Error {
            kind: ErrorKind::Stage(message),
            source: None,
        }
    }

    /// Installing a signal handler failed.
    pub fn is_signal(&self) -> bool {
        matches!(self.kind, ErrorKind::Signal)
    }

    /// Binding a listening socket failed.
    pub fn is_bind(&self) -> bool {
        matches!(self.kind, ErrorKind::Bind(_))
    }

    /// A listener could not be set up (for example an inherited one).
    pub fn is_listener(&self) -> bool {
        matches!(self.kind, ErrorKind::Listener(_))
    }

    /// A restart's control socket could not be set up: the path holds
    /// something that is not a socket, another live process answers there,
    /// or binding failed.
    pub fn is_control_socket(&self) -> bool {
        matches!(self.kind, ErrorKind::ControlSocket(_))
    }

    /// The PID file could not be written.
    pub fn is_pid_file(&self) -> bool {
        matches!(self.kind, ErrorKind::PidFile(_))
    }

    /// A TLS certificate or key could not be used (the message names the
    /// file).
    pub fn is_tls(&self) -> bool {
        matches!(self.kind, ErrorKind::Tls(_))
    }

    /// What a predecessor handed to this process at a restart (the
    /// readiness or state descriptors) could not be used.
    pub fn is_handover(&self) -> bool {
        matches!(self.kind, ErrorKind::Handover(_))
    }

    /// A stage could not be made: an unknown name, a name already used, or
    /// a dependency cycle (see [`Handle::stage`](crate::Handle::stage)).
    ///
    /// ```
    /// let lifecycle = lameduck::Lifecycle::builder().signals(lameduck::Signals::none()).build().unwrap();
    /// let err = lifecycle.handle().stage("workers", ["nope"]).unwrap_err();
    /// assert!(err.is_stage());
    /// ```
    pub fn is_stage(&self) -> bool {
        matches!(self.kind, ErrorKind::Stage(_))
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("lameduck::Error");
        d.field("kind", &self.kind);
        if let Some(source) = &self.source {
            d.field("source", source);
        }
        d.finish()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            ErrorKind::Signal => f.write_str("cannot install signal handlers"),
            ErrorKind::Bind(what) => write!(f, "cannot bind {what}"),
            ErrorKind::Listener(what) => write!(f, "cannot use listener {what}"),
            ErrorKind::ControlSocket(path) => write!(f, "cannot use control socket {path}"),
            ErrorKind::PidFile(path) => write!(f, "cannot write PID file {path}"),
            ErrorKind::Tls(what) => write!(f, "cannot use TLS {what}"),
            ErrorKind::Handover(what) => {
                write!(f, "cannot use what the predecessor handed over ({what})")
            }
            ErrorKind::Stage(message) => f.write_str(message),
        }
    }
}

impl StdError for Error {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.source.as_deref().map(|e| e as _)
    }
}
