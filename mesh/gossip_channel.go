package mesh

import (
	"fmt"
	"hash/fnv"
	"slices"
	"strings"
	"time"
)

// Wire forms (after the tag byte):
//
//	Gossip:    channel(str8) sender(6) payload
//	Unicast:   ttl(1) channel(str8) src(6) dst(6) payload
//	Broadcast: channel(str8) origin(6) payload
//
// The TTL bounds how long a unicast can circle while routes disagree.
const unicastTTL = 64

type gossipChannel struct {
	name string
	r    *Router
	g    Gossiper
}

var _ Gossip = (*gossipChannel)(nil)

// NewGossip registers g as the owner of channel and returns its sending side. Channel names
// are 1-64 bytes, unique per router.
func (r *Router) NewGossip(channel string, g Gossiper) (Gossip, error) {
	if len(channel) == 0 || len(channel) > maxChannelLen {
		return nil, fmt.Errorf("gossip channel name %q: must be 1-%d bytes", channel, maxChannelLen)
	}
	if g == nil {
		return nil, fmt.Errorf("gossip channel %q: nil Gossiper", channel)
	}
	if strings.HasPrefix(channel, reservedChannelPrefix) {
		return nil, fmt.Errorf("gossip channel %q: the %q prefix is reserved", channel, reservedChannelPrefix)
	}
	return r.newGossip(channel, g)
}

// reservedChannelPrefix marks the mesh's own channels (memberlist).
const reservedChannelPrefix = "mesh."

func (r *Router) newGossip(channel string, g Gossiper) (Gossip, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.channels[channel]; ok {
		return nil, fmt.Errorf("gossip channel %q already registered", channel)
	}
	c := &gossipChannel{name: channel, r: r, g: g}
	r.channels[channel] = c
	return c, nil
}

func (r *Router) channelList() []*gossipChannel {
	out := make([]*gossipChannel, 0, len(r.channels))
	for _, c := range r.channels {
		out = append(out, c)
	}
	slices.SortFunc(out, func(a, b *gossipChannel) int {
		if a.name < b.name {
			return -1
		}
		return 1
	})
	return out
}

func (c *gossipChannel) header(tag byte, extra ...PeerName) wbuf {
	var w wbuf
	w.u8(tag)
	if tag == tagGossipUnicast {
		w.u8(unicastTTL)
	}
	w.str8(c.name)
	for _, n := range extra {
		w.name(n)
	}
	return w
}

// GossipUnicast implements Gossip.
func (c *gossipChannel) GossipUnicast(dst PeerName, msg []byte) error {
	if dst == c.r.cfg.Name {
		return c.g.OnGossipUnicast(dst, slices.Clone(msg))
	}
	w := c.header(tagGossipUnicast, c.r.cfg.Name, dst)
	w.b = append(w.b, msg...)
	c.r.mu.Lock()
	defer c.r.mu.Unlock()
	return c.r.relayUnicastLocked(dst, w.b)
}

func (r *Router) relayUnicastLocked(dst PeerName, msg []byte) error {
	if r.closed {
		return ErrClosed
	}
	hop, ok := r.topo.routes().unicastAll[dst]
	if (!ok || r.conns[hop] == nil) && r.topo.rtDirty {
		// The coalesced table may predate what we just learned: look again, fresh.
		r.topo.recompute()
		hop, ok = r.topo.rt.unicastAll[dst]
	}
	if !ok || r.conns[hop] == nil {
		r.stats.NoRoute++
		return fmt.Errorf("gossip unicast to %s: %w", dst, ErrNoRoute)
	}
	if !r.conns[hop].enqueue(msg) {
		r.stats.DroppedSends++
		return fmt.Errorf("gossip unicast to %s via %s: send queue full", dst, hop)
	}
	return nil
}

// GossipBroadcast implements Gossip.
func (c *gossipChannel) GossipBroadcast(update GossipData) {
	if update == nil {
		return
	}
	self := c.r.cfg.Name
	for _, m := range update.Encode() {
		w := c.header(tagGossipBroadcast, self)
		w.b = append(w.b, m...)
		c.r.mu.Lock()
		c.r.seen.add(self, w.b[1:])
		for _, hop := range c.r.topo.routes().broadcastHops(self, true) {
			c.r.sendLocked(hop, w.b)
		}
		c.r.mu.Unlock()
	}
}

// GossipNeighbourSubset implements Gossip.
func (c *gossipChannel) GossipNeighbourSubset(update GossipData) {
	c.gossipExcept(update, UnknownPeerName)
}

func (c *gossipChannel) gossipExcept(update GossipData, exclude PeerName) {
	if update == nil {
		return
	}
	msgs := update.Encode()
	c.r.mu.Lock()
	defer c.r.mu.Unlock()
	nbs := c.r.topo.randomNeighbours(exclude)
	for _, m := range msgs {
		w := c.header(tagGossip, c.r.cfg.Name)
		w.b = append(w.b, m...)
		for _, nb := range nbs {
			c.r.sendLocked(nb, w.b)
		}
	}
}

func (c *gossipChannel) sendFullState(to PeerName) {
	data := c.g.Gossip()
	if data == nil {
		return
	}
	msgs := data.Encode()
	c.r.mu.Lock()
	defer c.r.mu.Unlock()
	for _, m := range msgs {
		w := c.header(tagGossip, c.r.cfg.Name)
		w.b = append(w.b, m...)
		c.r.sendLocked(to, w.b)
	}
}

// gossipAllChannels sends each channel's full state to a few random neighbours.
func (r *Router) gossipAllChannels() {
	r.mu.Lock()
	chans := r.channelList()
	now := time.Now()
	for k, t := range r.surrogate {
		if now.Sub(t) > r.cfg.GossipInterval {
			delete(r.surrogate, k)
		}
	}
	r.mu.Unlock()
	for _, c := range chans {
		if data := c.g.Gossip(); data != nil {
			c.GossipNeighbourSubset(data)
		}
	}
}

// handleGossip handles the three gossip message kinds from neighbour from.
func (r *Router) handleGossip(from PeerName, msg []byte) error {
	tag := msg[0]
	rd := rbuf{b: msg[1:]}
	var ttl byte
	if tag == tagGossipUnicast {
		ttl = rd.u8("ttl")
	}
	channel := rd.str8("channel", maxChannelLen)
	src := rd.name("source")
	var dst PeerName
	if tag == tagGossipUnicast {
		dst = rd.name("destination")
	}
	if rd.err != nil {
		return fmt.Errorf("gossip from %s: %w", from, rd.err)
	}
	payload := rd.rest()
	r.mu.Lock()
	ch := r.channels[channel]
	r.mu.Unlock()

	switch tag {
	case tagGossipUnicast:
		if dst != r.cfg.Name {
			if ttl <= 1 {
				return fmt.Errorf("gossip unicast %s->%s on %q: ttl expired", src, dst, channel)
			}
			fwd := slices.Clone(msg)
			fwd[1] = ttl - 1
			r.mu.Lock()
			defer r.mu.Unlock()
			return r.relayUnicastLocked(dst, fwd)
		}
		if ch == nil {
			r.countUnknownChannel()
			return nil
		}
		if err := ch.g.OnGossipUnicast(src, payload); err != nil {
			return fmt.Errorf("gossip unicast on %q from %s: %w", channel, src, err)
		}
	case tagGossipBroadcast:
		r.mu.Lock()
		fresh := r.seen.add(src, msg[1:])
		r.mu.Unlock()
		if !fresh {
			return nil
		}
		if ch == nil {
			r.countUnknownChannel()
			r.relayBroadcast(src, from, [][]byte{slices.Clone(msg)})
			return nil
		}
		data, err := ch.g.OnGossipBroadcast(src, payload)
		if err != nil {
			return fmt.Errorf("gossip broadcast on %q from %s: %w", channel, src, err)
		}
		if data == nil {
			return nil
		}
		var out [][]byte
		for _, m := range data.Encode() {
			w := ch.header(tagGossipBroadcast, src)
			w.b = append(w.b, m...)
			out = append(out, w.b)
		}
		r.relayBroadcast(src, from, out)
	case tagGossip:
		if ch == nil {
			// A surrogate: relay what we have not seen within one gossip interval, so
			// peers that lack the feature still pass it on.
			h := fnv.New64a()
			h.Write(msg)
			k := h.Sum64()
			r.mu.Lock()
			_, dup := r.surrogate[k]
			if !dup && len(r.surrogate) < 1<<16 {
				r.surrogate[k] = time.Now()
			}
			r.stats.UnknownChannel++
			if !dup {
				fwd := slices.Clone(msg)
				for _, nb := range r.topo.randomNeighbours(from) {
					r.sendLocked(nb, fwd)
				}
			}
			r.mu.Unlock()
			return nil
		}
		delta, err := ch.g.OnGossip(payload)
		if err != nil {
			return fmt.Errorf("gossip on %q from %s: %w", channel, src, err)
		}
		ch.gossipExcept(delta, from)
	}
	return nil
}

func (r *Router) countUnknownChannel() {
	r.mu.Lock()
	r.stats.UnknownChannel++
	r.mu.Unlock()
}

func (r *Router) relayBroadcast(origin, from PeerName, msgs [][]byte) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, hop := range r.topo.relayRoutes().broadcastHops(origin, true) {
		if hop == from || hop == origin {
			continue
		}
		for _, m := range msgs {
			r.sendLocked(hop, m)
		}
	}
	for _, m := range msgs {
		r.seen.add(origin, m[1:])
	}
}
