//! cgroup (being written).
