//go:build !linux

package main

// raiseCapabilities does nothing where there are no Linux capabilities.
func raiseCapabilities() error { return nil }

// capabilityAttrs has nothing to say where there are no Linux capabilities.
func capabilityAttrs() []any { return nil }
