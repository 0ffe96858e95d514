package pinhole

// A forking proxy sends one INVITE to several phones; each that answers with SDP (in a 18x or a
// 2xx, under its own To tag) opens a dialog with media of its own, all answering the one offer
// (RFC 3261 sections 13.2.2.4 and 16.7; RFC 3960 on early media from forks). sipcar
// gives each such answer a pair of its own (MediaRequest.Fork), so that every dialog's media is
// relayed, and the caller's offer pair is shared: the media relay tells the dialogs apart by their
// source. Once a 2xx settles the call on one dialog, the others' pairs go.

// SettleFork keeps, in every stream of the call, the answer leg of the dialog whose answering tag
// is tag and releases the other dialogs' (ReasonForkEnded): the relay calls it on the first 2xx
// to the initial INVITE. A stream that has no leg of that dialog is left as it is. Ports it
// releases are free when it returns.
func (m *Map) SettleFork(callID, tag string) {
	var out []released
	m.mu.Lock()
	if c := m.calls[callID]; c != nil && tag != "" {
		for _, st := range c.streams {
			i := st.forkSide()
			if i < 0 || (st.legs[i].fork != tag && st.forkOf(tag) < 0) {
				continue
			}
			for j := len(st.forks) - 1; j >= 0; j-- {
				if st.forks[j].fork != tag {
					out = m.releaseForkLocked(st, j, ReasonForkEnded, out)
				}
			}
			if st.legs[i].fork != tag {
				out = m.releaseLegLocked(st, i, ReasonForkEnded, out)
				promoteForkLocked(st, i)
			}
		}
	}
	m.mu.Unlock()
	m.finish(out)
}

// EndFork releases the answer legs of the dialog whose answering tag is tag, if the call has
// other dialogs with media (the BYE of a second 2xx that the caller does not keep), and reports
// whether it did. When tag's dialog is the call's only one it releases nothing and reports
// false: the call ends with it ([Map.ReleaseCall]).
func (m *Map) EndFork(callID, tag string) bool {
	var out []released
	ended := false
	m.mu.Lock()
	if c := m.calls[callID]; c != nil && tag != "" {
		for _, st := range c.streams {
			if len(st.forks) > 0 {
				ended = true
				break
			}
		}
		for _, st := range c.streams {
			if !ended {
				break
			}
			i := st.forkSide()
			if i < 0 {
				continue
			}
			if j := st.forkOf(tag); j >= 0 {
				out = m.releaseForkLocked(st, j, ReasonForkEnded, out)
			} else if st.legs[i].fork == tag {
				out = m.releaseLegLocked(st, i, ReasonForkEnded, out)
				promoteForkLocked(st, i)
			}
		}
	}
	m.mu.Unlock()
	m.finish(out)
	return ended
}

// promoteForkLocked makes the first fork the stream's answer leg from leg index i once that leg
// is gone, if the forks answer from that side.
func promoteForkLocked(st *stream, i int) {
	if st.legs[i].rtp != nil || len(st.forks) == 0 || legIndex(st.forks[0].rtp.faces.Other()) != i {
		return
	}
	f := st.forks[0]
	st.forks = append(st.forks[:0], st.forks[1:]...)
	st.legs[i] = f
	linkLocked(st, i, f, true)
}
