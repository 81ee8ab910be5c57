//! notify (being written).
