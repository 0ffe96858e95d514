package policy

import "strings"

// methodSet is a set of SIP methods as bits. Methods the engine does not know share one bit,
// which only method=any matches.
type methodSet uint32

const (
	mInvite methodSet = 1 << iota
	mAck
	mBye
	mCancel
	mOptions
	mRegister
	mPrack
	mSubscribe
	mNotify
	mPublish
	mInfo
	mRefer
	mMessage
	mUpdate
	mOther

	methodsAny = mOther<<1 - 1
)

// knownMethods lists the method names a rule may name, for error messages.
const knownMethods = "INVITE, ACK, BYE, CANCEL, OPTIONS, REGISTER, PRACK, SUBSCRIBE, NOTIFY, PUBLISH, INFO, REFER, MESSAGE, UPDATE"

// methodBit returns the bit of a request's method. SIP method names are case-sensitive
// (RFC 3261 section 7.1): "invite" is an unknown method, not INVITE.
func methodBit(m string) methodSet {
	switch m {
	case "INVITE":
		return mInvite
	case "ACK":
		return mAck
	case "BYE":
		return mBye
	case "CANCEL":
		return mCancel
	case "OPTIONS":
		return mOptions
	case "REGISTER":
		return mRegister
	case "PRACK":
		return mPrack
	case "SUBSCRIBE":
		return mSubscribe
	case "NOTIFY":
		return mNotify
	case "PUBLISH":
		return mPublish
	case "INFO":
		return mInfo
	case "REFER":
		return mRefer
	case "MESSAGE":
		return mMessage
	case "UPDATE":
		return mUpdate
	}
	return mOther
}

// ruleMethodBit returns the bit of a method named in a rule, where the name's case does not
// matter (operators write "invite"), and false for a name the engine does not know, so that a
// typo such as INVTE stops start-up instead of never matching.
func ruleMethodBit(name string) (methodSet, bool) {
	b := methodBit(strings.ToUpper(name))
	return b, b != mOther
}

// Initial reports whether a request starts a dialog or a registration, the requests a rule's
// rate counts: INVITE, SUBSCRIBE, REFER, REGISTER, and the out-of-dialog MESSAGE and PUBLISH, when
// they are outside a dialog (no To tag). Other requests are screened but never rate-limited:
// OPTIONS pings, for instance, come every few seconds from every trunk.
func Initial(method string, inDialog bool) bool {
	if inDialog {
		return false
	}
	switch methodBit(method) {
	case mInvite, mSubscribe, mRefer, mRegister, mMessage, mPublish:
		return true
	}
	return false
}

// transportSet is a set of SIP transports as bits; tOther is a transport a rule cannot name
// (only transport=any matches it).
type transportSet uint8

const (
	tUDP transportSet = 1 << iota
	tTCP
	tTLS
	tOther

	transportsAny = tOther<<1 - 1
)

// transportBit returns the bit of a transport name, in any ASCII case ("udp", "UDP").
func transportBit(s string) transportSet {
	switch {
	case equalLower(s, "udp"):
		return tUDP
	case equalLower(s, "tcp"):
		return tTCP
	case equalLower(s, "tls"):
		return tTLS
	}
	return tOther
}
