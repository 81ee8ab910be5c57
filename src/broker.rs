//! broker (being written).
