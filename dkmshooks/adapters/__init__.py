"""Package-manager adapters: each turns what one manager tells its hooks into a `Trigger` and hands
it to `dkmshooks.engine.handle_trigger`. Adapters never decide what to build, and the core never
imports an adapter."""
