// Package cli implements weavectl's subcommands, one file each; it talks to the daemon only
// through api/client.
package cli
