package main

import "testing"

func TestDatapathFlagsAndEnvironment(t *testing.T) {
	o, err := parseFlags(nil, env(nil))
	if err != nil {
		t.Fatal(err)
	}
	if c := o.cfg; c.Datapath != "linux" || c.OVSSocket != "unix:/var/run/openvswitch/db.sock" || c.OVSDatapathType != "" {
		t.Fatalf("defaults: datapath %q socket %q type %q", c.Datapath, c.OVSSocket, c.OVSDatapathType)
	}
	o, err = parseFlags([]string{"--datapath=ovs", "--ovs-socket", "unix:/tmp/x/db.sock", "--ovs-datapath-type", "netdev", "10.0.0.1"}, env(nil))
	if err != nil {
		t.Fatal(err)
	}
	if c := o.cfg; c.Datapath != "ovs" || c.OVSSocket != "unix:/tmp/x/db.sock" || c.OVSDatapathType != "netdev" || len(c.Peers) != 1 {
		t.Fatalf("flags: %+v", c)
	}
	o, err = parseFlags([]string{"--ovs-datapath-type=system"}, env(map[string]string{
		"WEAVE_DATAPATH": "ovs", "WEAVE_OVS_SOCKET": "/run/ovs/db.sock", "WEAVE_OVS_DATAPATH_TYPE": "netdev"}))
	if err != nil {
		t.Fatal(err)
	}
	if c := o.cfg; c.Datapath != "ovs" || c.OVSSocket != "/run/ovs/db.sock" || c.OVSDatapathType != "system" {
		t.Fatalf("environment, flag over env: %+v", c)
	}
}
