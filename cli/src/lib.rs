//! The irm operator CLI and the oping/operf tools.
//!
//! Not implemented yet: see the open issues.
