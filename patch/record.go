package patch

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"os"
	"slices"
	"strconv"
	"time"

	"github.com/lucos/lucos/internal/layout"
	"github.com/lucos/lucos/introspect"
	"github.com/lucos/lucos/patch/loader"
)

// A patch's record lives in the guest, at the end of its slot (recordArea
// bytes that no page of the slot maps): what another lucos needs to take
// the patch over — list it, let it commit, roll it back — after the one
// that applied it detached or was killed. It is written with the patch's
// pages, before the PMD entry that maps them, and never changes: the
// patch's state is read from the guest itself (its entries) when it is
// adopted, so no record can be stale. Patches with data updates are
// adopted for listing only: their instances are not recorded.
const (
	recordArea    = 64 << 10
	recordMagic   = "LUCOSREC"
	recordVersion = 1
	recordHeader  = 8 + 4 + 4 + 4 // magic, version, length, CRC-32 of the JSON
)

// record is the JSON of a patch's record.
type record struct {
	ID          string             `json:"id"`
	Name        string             `json:"name"`
	Description string             `json:"description,omitempty"`
	BuildID     string             `json:"build_id"`
	Release     string             `json:"release"`
	Applied     time.Time          `json:"applied"`
	By          int                `json:"lucos_pid"`
	SlotVA      uint64             `json:"slot_va"`
	Funcs       []recordFunc       `json:"funcs"`
	Text        []introspect.Range `json:"text"`
	Runtime     loader.Runtime     `json:"runtime"`
	Shell       *loader.Shell      `json:"shell,omitempty"`
	Callbacks   []loader.Callback  `json:"callbacks,omitempty"`
	Hooks       []recordHook       `json:"hooks,omitempty"`
	Data        int                `json:"data_updates"`
	Replace     bool               `json:"replace,omitempty"` // it took over every patch below (atomic replace)
}

type recordFunc struct {
	Func
	Orig      []byte `json:"orig"`
	Expect    []byte `json:"expect"`
	BelowNew  uint64 `json:"below_new,omitempty"`
	BelowSize uint64 `json:"below_size,omitempty"`
}

type recordHook struct {
	Name  string `json:"name"`
	Count uint64 `json:"count"`
}

// recordPA is the guest-physical address of slot s's record.
func recordPA(slotPA uint64) uint64 { return slotPA + layout.SlotSize - recordArea }

// encodeRecord is p's record as written to the guest.
func encodeRecord(p *Patch) ([]byte, error) {
	r := record{ID: p.id, Name: p.name, Description: p.description, BuildID: p.buildID, Release: p.release,
		Applied: time.Now().UTC(), By: os.Getpid(), SlotVA: p.slot.va, Text: p.text, Runtime: p.rt, Shell: p.shell,
		Callbacks: p.callbacks, Data: len(p.data), Replace: p.replaces}
	for _, f := range p.funcs {
		r.Funcs = append(r.Funcs, recordFunc{Func: f, Orig: f.Orig, Expect: f.Expect, BelowNew: f.BelowNew, BelowSize: f.BelowSize})
	}
	for _, h := range p.hooks {
		r.Hooks = append(r.Hooks, recordHook{Name: h.name, Count: h.count})
	}
	body, err := json.Marshal(r)
	if err != nil {
		return nil, err
	}
	if len(body)+recordHeader > recordArea {
		return nil, fmt.Errorf("the patch's record is %d bytes, more than the %d its slot keeps", len(body)+recordHeader, recordArea)
	}
	out := make([]byte, recordHeader, recordHeader+len(body))
	copy(out, recordMagic)
	binary.LittleEndian.PutUint32(out[8:], recordVersion)
	binary.LittleEndian.PutUint32(out[12:], uint32(len(body)))
	binary.LittleEndian.PutUint32(out[16:], crc32.ChecksumIEEE(body))
	return append(out, body...), nil
}

// errNoRecord: a slot holds no (valid) record.
var errNoRecord = errors.New("no patch record")

// readRecord reads and checks the record of the slot at guest-physical pa.
func (e *Engine) readRecord(pa uint64) (*record, error) {
	hdr := make([]byte, recordHeader)
	if err := e.m.ReadPhys(recordPA(pa), hdr); err != nil {
		return nil, err
	}
	n, err := recordLength(hdr)
	if err != nil {
		return nil, err
	}
	b := make([]byte, recordHeader+n)
	if err := e.m.ReadPhys(recordPA(pa), b); err != nil {
		return nil, err
	}
	return decodeRecord(b)
}

// recordLength checks a record's header and returns its JSON's length.
func recordLength(hdr []byte) (int, error) {
	if len(hdr) < recordHeader || !bytes.Equal(hdr[:8], []byte(recordMagic)) {
		return 0, errNoRecord
	}
	if v := binary.LittleEndian.Uint32(hdr[8:]); v != recordVersion {
		return 0, fmt.Errorf("%w: record version %d, this lucos reads %d", errNoRecord, v, recordVersion)
	}
	n := binary.LittleEndian.Uint32(hdr[12:])
	if n > recordArea-recordHeader {
		return 0, fmt.Errorf("%w: record length %d", errNoRecord, n)
	}
	return int(n), nil
}

// decodeRecord checks and decodes a record (header and JSON).
func decodeRecord(b []byte) (*record, error) {
	n, err := recordLength(b)
	if err != nil {
		return nil, err
	}
	if len(b) < recordHeader+n {
		return nil, fmt.Errorf("%w: record cut short", errNoRecord)
	}
	body := b[recordHeader : recordHeader+n]
	if crc32.ChecksumIEEE(body) != binary.LittleEndian.Uint32(b[16:]) {
		return nil, fmt.Errorf("%w: checksum mismatch", errNoRecord)
	}
	var r record
	if err := json.Unmarshal(body, &r); err != nil {
		return nil, fmt.Errorf("%w: %v", errNoRecord, err)
	}
	return &r, nil
}

// adoptForeign takes over the patches in the slots an earlier lucos left
// (findForeignSlots), from their records. Each patch's state comes from
// its entries in the guest: every one holding its jump (or that of a
// recorded patch chained over it) is a live patch, which transitions
// again (termination checks) and so commits once no thread is in its old
// functions; every one holding its original bytes is a rollback that had
// restored the entries, which drains and frees its slot as a rollback
// does. A slot with no valid record, for another kernel, or with entries
// in neither shape stays foreign: never written, never freed.
// Precondition: called from New, before the engine is shared.
func (e *Engine) adoptForeign() {
	type cand struct {
		idx int
		r   *record
	}
	var cands []cand
	for idx, va := range e.foreign {
		r, err := e.readRecord(layout.SlotBase(idx))
		switch {
		case err != nil:
			e.log.Warn("patch slot left by an earlier lucos has no record: left alone", "slot", idx, "err", err)
			continue
		case r.Release != e.k.Release() || r.SlotVA != va:
			e.log.Warn("patch record does not match this guest: left alone", "slot", idx, "release", r.Release, "slot_va", r.SlotVA)
			continue
		}
		cands = append(cands, cand{idx, r})
	}
	slices.SortFunc(cands, func(a, b cand) int { return compareIDs(a.r.ID, b.r.ID) })
	// chainedBy: function entry → jump bytes of a recorded patch above.
	chainedBy := map[string]map[uint64][]byte{}
	for _, c := range cands {
		for _, f := range c.r.Funcs {
			if f.Below != "" {
				if chainedBy[f.Below] == nil {
					chainedBy[f.Below] = map[uint64][]byte{}
				}
				chainedBy[f.Below][f.OldAddr] = mustJmp(f.OldAddr, f.New)
			}
		}
	}
	shells := map[string]bool{}
	if mods, err := e.k.Modules(); err == nil {
		for _, m := range mods {
			shells[m.Name] = true
		}
	}
	// Below a cumulative patch (atomic replace) every patch was being
	// released: its jumps are overwritten, its code drains.
	replacedBelow := ""
	for _, c := range cands {
		if c.r.Replace {
			replacedBelow = c.r.ID
		}
	}
	for _, c := range cands {
		// A replaced patch is treated as restored: it drains and is freed.
		replaced := replacedBelow != "" && compareIDs(c.r.ID, replacedBelow) < 0
		p, state, err := e.adoptOne(c.idx, c.r, chainedBy[c.r.ID], shells, replaced)
		if err != nil {
			e.log.Warn("patch left by an earlier lucos cannot be taken over: left alone", "slot", c.idx, "id", c.r.ID, "err", err)
			continue
		}
		delete(e.foreign, c.idx)
		e.slots[c.idx] = p
		e.patches = append(e.patches, p)
		if n, err := strconv.Atoi(p.id); err == nil {
			e.nextID = max(e.nextID, n)
		}
		e.log.Info("patch taken over from an earlier lucos", "id", p.id, "name", p.name, "state", state)
		switch state {
		case StateTransitioning:
			go e.terminate(p, time.Now())
		case StateReverting:
			go e.release(p, time.Now())
		}
	}
}

// adoptOne builds the Patch of record r in slot idx and says what state
// its entries put it in.
func (e *Engine) adoptOne(idx int, r *record, chained map[uint64][]byte, shells map[string]bool, replaced bool) (*Patch, State, error) {
	own, orig := 0, 0
	for _, f := range r.Funcs {
		entry, err := readEntry(e.k, f.OldAddr)
		if err != nil {
			return nil, "", err
		}
		switch {
		case bytes.Equal(entry, mustJmp(f.OldAddr, f.New)) || bytes.Equal(entry, chained[f.OldAddr]):
			own++
		case bytes.Equal(entry, f.Orig):
			orig++
		}
	}
	state := StateTransitioning
	switch {
	case replaced:
		state = StateReverting
	case own == len(r.Funcs): // with no functions: callbacks or data only, live
	case orig == len(r.Funcs):
		state = StateReverting
	default:
		return nil, "", fmt.Errorf("of its %d functions %d hold its jump and %d their original bytes", len(r.Funcs), own, orig)
	}
	s := &slot{index: idx, pa: layout.SlotBase(idx), va: r.SlotVA, pmd: e.win.pmdTable + 8*((r.SlotVA-e.win.tableVA)/layout.SlotSize)}
	p := &Patch{
		id: r.ID, name: r.Name, description: r.Description, buildID: r.BuildID, release: r.Release,
		slot: s, text: r.Text, rt: r.Runtime, shell: r.Shell, callbacks: r.Callbacks, k: e.k,
		state: state, done: make(chan struct{}), threadSeen: map[uint64]bool{}, callbackRuns: map[string]int{},
		kicked: map[uint64]time.Time{}, orphanData: r.Data,
		history: []Event{{State: state, At: time.Now(), Note: fmt.Sprintf("taken over from lucos pid %d, which applied it at %s", r.By, r.Applied.Format(time.RFC3339))}},
	}
	for _, f := range r.Funcs {
		fn := f.Func
		fn.Orig, fn.Expect, fn.BelowNew, fn.BelowSize = f.Orig, f.Expect, f.BelowNew, f.BelowSize
		p.funcs = append(p.funcs, fn)
	}
	for _, h := range r.Hooks {
		p.hooks = append(p.hooks, hook{name: h.Name, count: h.Count})
	}
	p.shellUp = p.shell != nil && shells[p.shell.Name]
	return p, state, nil
}

// compareIDs orders patch ids numerically.
func compareIDs(a, b string) int {
	x, _ := strconv.Atoi(a)
	y, _ := strconv.Atoi(b)
	return x - y
}
