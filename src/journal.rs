//! journal (being written).
