//! The supervisor: the one owner of the daemon's state.
