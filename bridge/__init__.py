"""The provisioning bridge: billing-platform orders in, exactly-once hosting-panel provisioning out."""
