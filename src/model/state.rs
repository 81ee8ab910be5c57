//! The states that status shows, as enums. Their wire spelling (serde) is
//! the JSON contract of `clearifyctl status --json` and must never change:
//! `tests/fixtures/status.json` holds every one of them.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The state of one instance, as status shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum InstanceState {
    /// Spawned, not yet up (no heartbeat and less than a second alive).
    Starting,
    /// Up: a heartbeat came, or it has been alive for a second.
    Running,
    /// Exited; waiting for the restart delay.
    Backoff,
    /// Several quick failures in a row; restarts keep coming, slower.
    CrashLoop,
    /// Being stopped (SIGTERM, then SIGQUIT, then its tree killed).
    Stopping,
    /// Not running, and not going to by itself.
    Stopped,
    /// Held back until the broker is reachable.
    WaitingForBroker,
}

impl InstanceState {
    /// Every state, in the order of the lifecycle.
    pub const ALL: [InstanceState; 7] = [
        InstanceState::WaitingForBroker,
        InstanceState::Starting,
        InstanceState::Running,
        InstanceState::Backoff,
        InstanceState::CrashLoop,
        InstanceState::Stopping,
        InstanceState::Stopped,
    ];

    /// The wire spelling: `starting`, `running`, `backoff`, `crash-loop`,
    /// `stopping`, `stopped`, `waiting-for-broker`.
    pub fn as_str(self) -> &'static str {
        match self {
            InstanceState::Starting => "starting",
            InstanceState::Running => "running",
            InstanceState::Backoff => "backoff",
            InstanceState::CrashLoop => "crash-loop",
            InstanceState::Stopping => "stopping",
            InstanceState::Stopped => "stopped",
            InstanceState::WaitingForBroker => "waiting-for-broker",
        }
    }
}

impl fmt::Display for InstanceState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The broker as the daemon last saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BrokerState {
    /// Nothing to check (no groups, so no monitor).
    Unknown,
    /// Not reached yet since the daemon started; workers wait for it.
    Waiting,
    /// Reachable.
    Ok,
    /// Lost after it was reached (or a fatal configuration error).
    Unreachable,
}

impl BrokerState {
    /// Every state.
    pub const ALL: [BrokerState; 4] = [
        BrokerState::Unknown,
        BrokerState::Waiting,
        BrokerState::Ok,
        BrokerState::Unreachable,
    ];

    /// The wire spelling: `unknown`, `waiting`, `ok`, `unreachable`.
    pub fn as_str(self) -> &'static str {
        match self {
            BrokerState::Unknown => "unknown",
            BrokerState::Waiting => "waiting",
            BrokerState::Ok => "ok",
            BrokerState::Unreachable => "unreachable",
        }
    }
}

impl fmt::Display for BrokerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_spelling_is_as_str_and_round_trips() {
        for s in InstanceState::ALL {
            let json = serde_json::to_string(&s).unwrap();
            assert_eq!(json, format!("\"{}\"", s.as_str()));
            assert_eq!(serde_json::from_str::<InstanceState>(&json).unwrap(), s);
        }
        for s in BrokerState::ALL {
            let json = serde_json::to_string(&s).unwrap();
            assert_eq!(json, format!("\"{s}\""));
            assert_eq!(serde_json::from_str::<BrokerState>(&json).unwrap(), s);
        }
        assert_eq!(InstanceState::CrashLoop.to_string(), "crash-loop");
        assert_eq!(
            serde_json::to_string(&InstanceState::WaitingForBroker).unwrap(),
            "\"waiting-for-broker\""
        );
        // Anything else is an error naming what was expected.
        let err = serde_json::from_str::<InstanceState>("\"Running\"").unwrap_err();
        assert!(err.to_string().contains("unknown variant"), "{err}");
    }
}
