// Package policy is sipcar's rule engine: it screens SIP requests by source, destination,
// transport and method, as the firewall ALGs screen SIP as a service, and limits how fast each
// source may start dialogs and registrations.
//
// A [Rules] is an ordered list of rules parsed from the compact syntax of README.md ([Parse],
// [Load]); the first rule that matches a request decides, and a request no rule matches gets the
// default action. A [Policy] holds the rule set in force, the default action, the per-rule
// counters and the rate limiters. Its [Policy.Evaluate] is safe for concurrent use, allocates
// nothing, and reads the rule set through an atomic pointer, so [Policy.Swap] (a reload) never
// blocks evaluation and never drops a call: a request evaluated during a swap is decided wholly by
// the old rules or wholly by the new ones. Rule sets of up to 1024 rules and 4096 prefixes and
// host names are indexed (a bit set per field value, see [index]), so evaluation costs about the
// same for one rule or a thousand.
//
// The relay decides what is screened. It evaluates requests that start something (out-of-dialog
// requests, and the ACK or CANCEL that has no transaction); in-dialog requests of a permitted
// dialog, responses to a permitted request and media matching the server map are not screened.
// It answers a [Decision] that denies with [Decision.Status] and [Decision.Warning], or drops the
// request when [Decision.Silent] says so.
//
// policy imports no other sipcar package.
package policy
