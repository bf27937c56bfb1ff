package ipam

// Validate checks the configuration as New would (range, default subnet, --ipalloc-init),
// without opening anything, so a daemon can refuse bad settings before it touches the host.
func (c Config) Validate() error {
	_, err := c.resolve()
	return err
}
