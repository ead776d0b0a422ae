//! The planner: cost model and plan search (being built).
