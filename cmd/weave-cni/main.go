// Command weave-cni is the CNI plugin that attaches pods to the weave router's bridge
// (ADD, DEL, CHECK, VERSION, STATUS, GC); see package plugin.
package main

import "github.com/weavemesh/weave/plugin"

func main() { plugin.Main() }
