"""Payment providers behind one gateway protocol: Stripe, YooKassa and the built-in sandbox."""
