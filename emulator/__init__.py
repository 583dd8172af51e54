"""vnetlab: classic Azure VNet-to-VNet plans as live Linux labs with real strongSwan gateways."""
