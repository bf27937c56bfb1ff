// Package dns will serve container names over the mesh gossip (weaveDNS successor).
package dns
