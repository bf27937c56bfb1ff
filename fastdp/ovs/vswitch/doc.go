// Package vswitch holds the libovsdb models of the Open_vSwitch database tables the OVS
// backend touches (Open_vSwitch, Bridge, Port, Interface), generated from the schema
// committed in ../schema (a copy of Debian's /usr/share/openvswitch/vswitch.ovsschema).
// Do not edit the generated files: change the schema or the generator and run go generate.
package vswitch

//go:generate go run ../internal/modelgen/cmd/ovsmodelgen -p vswitch -o . ../schema/vswitch.ovsschema
