package mesh

// CheckNickName reports whether n is a nickname the handshake accepts (printable UTF-8, at
// most MaxNickNameLen bytes), so a router can refuse a bad --nickname before it starts
// instead of having every peer refuse its connections.
func CheckNickName(n string) error { return checkNickName(n) }
