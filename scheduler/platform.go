package scheduler

import (
	"sort"
	"strings"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"

	rwpb "github.com/buildfleet/buildfleet/proto/remoteworkers/v1test2"
)

// platform is the set of properties an action requires of a worker, sorted by key then value.
type platform struct {
	props []property
	// key is the canonical form "k1=v1,k2=v2" ("" for an empty platform), used to group the
	// queue and as the metrics label.
	key string
}

// property is one required or advertised key/value pair.
type property struct{ name, value string }

// newPlatform canonicalizes a REAPI platform. Duplicate pairs collapse.
func newPlatform(p *repb.Platform) platform {
	var props []property
	for _, pp := range p.GetProperties() {
		props = append(props, property{pp.GetName(), pp.GetValue()})
	}
	sort.Slice(props, func(i, j int) bool {
		if props[i].name != props[j].name {
			return props[i].name < props[j].name
		}
		return props[i].value < props[j].value
	})
	out := props[:0]
	for i, pp := range props {
		if i > 0 && pp == props[i-1] {
			continue
		}
		out = append(out, pp)
	}
	parts := make([]string, len(out))
	for i, pp := range out {
		parts[i] = pp.name + "=" + pp.value
	}
	return platform{props: out, key: strings.Join(parts, ",")}
}

// label is the platform's metrics label.
func (p platform) label() string {
	if p.key == "" {
		return "default"
	}
	return p.key
}

// requirements renders the platform as the Worker of a lease's requirements.
func (p platform) requirements() *rwpb.Worker {
	dev := &rwpb.Device{Handle: "primary"}
	for _, pp := range p.props {
		dev.Properties = append(dev.Properties, &rwpb.Device_Property{Key: pp.name, Value: pp.value})
	}
	return &rwpb.Worker{Devices: []*rwpb.Device{dev}}
}

// botProperties is what a bot advertises: for each key, the set of values it supports.
type botProperties map[string]map[string]bool

// newBotProperties reads the properties of worker.devices[0] and worker.properties.
func newBotProperties(w *rwpb.Worker) botProperties {
	bp := botProperties{}
	add := func(k, v string) {
		if bp[k] == nil {
			bp[k] = map[string]bool{}
		}
		bp[k][v] = true
	}
	if devs := w.GetDevices(); len(devs) > 0 {
		for _, p := range devs[0].GetProperties() {
			add(p.GetKey(), p.GetValue())
		}
	}
	for _, p := range w.GetProperties() {
		add(p.GetKey(), p.GetValue())
	}
	return bp
}

// satisfies reports whether the bot has every required pair: for a key required with several
// values, every one of them.
func (bp botProperties) satisfies(p platform) bool {
	return bp.firstMissing(p) < 0
}

// firstMissing returns the index of the first required pair the bot lacks, or -1.
func (bp botProperties) firstMissing(p platform) int {
	for i, pp := range p.props {
		if !bp[pp.name][pp.value] {
			return i
		}
	}
	return -1
}

// countSatisfied returns how many required pairs the bot has.
func (bp botProperties) countSatisfied(p platform) int {
	n := 0
	for _, pp := range p.props {
		if bp[pp.name][pp.value] {
			n++
		}
	}
	return n
}

// equal reports whether two property sets are the same.
func (bp botProperties) equal(o botProperties) bool {
	if len(bp) != len(o) {
		return false
	}
	for k, vs := range bp {
		ovs, ok := o[k]
		if !ok || len(ovs) != len(vs) {
			return false
		}
		for v := range vs {
			if !ovs[v] {
				return false
			}
		}
	}
	return true
}

// capacityOf reads worker.configs["capacity"], defaulting to 1.
func capacityOf(w *rwpb.Worker) int {
	for _, c := range w.GetConfigs() {
		if c.GetKey() != "capacity" {
			continue
		}
		n := 0
		for _, r := range c.GetValue() {
			if r < '0' || r > '9' || n > 1<<20 {
				return 1
			}
			n = n*10 + int(r-'0')
		}
		if n >= 1 {
			return n
		}
	}
	return 1
}
