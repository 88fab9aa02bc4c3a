"""One plain async function per command and query: (message, unit of work, deps) -> reply data."""
