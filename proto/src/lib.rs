//! Every o7s wire format, pure: views with checked lengths and parse/emit representations, no I/O.
//!
//! Not implemented yet: see the open issues.
