"""The billing domain: money, state machines, errors and events. No I/O here."""
