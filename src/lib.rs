//! mcpmux: many tenants' stdio MCP servers behind one Streamable HTTP endpoint.

pub mod child;
pub mod cli;
pub mod clients;
pub mod mcp;
pub mod settings;
