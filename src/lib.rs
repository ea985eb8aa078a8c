//! mcpmux: many tenants' stdio MCP servers behind one Streamable HTTP endpoint.

pub mod child;
pub mod clients;
