package remoteworkers_test

import (
	"sort"
	"testing"

	spb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/fieldmaskpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	rwpb "github.com/buildfleet/buildfleet/proto/remoteworkers/v1test2"
)

// field is one top-level field found on the wire.
type field struct {
	num protowire.Number
	typ protowire.Type
	raw []byte // the value's bytes for length-delimited fields
	v   uint64 // the value of varint fields
}

// decode splits b into its top-level fields with protowire alone, independent of the
// generated code.
func decode(t *testing.T, b []byte) []field {
	t.Helper()
	var out []field
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			t.Fatalf("bad tag: %v", protowire.ParseError(n))
		}
		b = b[n:]
		f := field{num: num, typ: typ}
		switch typ {
		case protowire.VarintType:
			v, m := protowire.ConsumeVarint(b)
			if m < 0 {
				t.Fatalf("bad varint in field %d", num)
			}
			f.v, n = v, m
		case protowire.BytesType:
			v, m := protowire.ConsumeBytes(b)
			if m < 0 {
				t.Fatalf("bad bytes in field %d", num)
			}
			f.raw, n = v, m
		default:
			n = protowire.ConsumeFieldValue(num, typ, b)
			if n < 0 {
				t.Fatalf("bad value in field %d", num)
			}
		}
		b = b[n:]
		out = append(out, f)
	}
	return out
}

func marshal(t *testing.T, m proto.Message) []byte {
	t.Helper()
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(m)
	if err != nil {
		t.Fatalf("Marshal(%T): %v", m, err)
	}
	return b
}

// byNumber indexes fields by number, failing on an unexpected number or wire type.
func byNumber(t *testing.T, what string, fs []field, want map[protowire.Number]protowire.Type) map[protowire.Number][]field {
	t.Helper()
	got := map[protowire.Number][]field{}
	for _, f := range fs {
		wt, ok := want[f.num]
		if !ok {
			t.Errorf("%s: unexpected field number %d on the wire", what, f.num)
			continue
		}
		if f.typ != wt {
			t.Errorf("%s: field %d has wire type %d, want %d", what, f.num, f.typ, wt)
		}
		got[f.num] = append(got[f.num], f)
	}
	var nums []int
	for n := range want {
		if len(got[n]) == 0 {
			nums = append(nums, int(n))
		}
	}
	sort.Ints(nums)
	if len(nums) > 0 {
		t.Errorf("%s: field numbers %v missing from the wire", what, nums)
	}
	return got
}

func str(t *testing.T, what string, fs []field, want string) {
	t.Helper()
	if len(fs) != 1 {
		t.Errorf("%s occurs %d times on the wire, want once", what, len(fs))
		return
	}
	if got := string(fs[0].raw); got != want {
		t.Errorf("%s = %q, want %q", what, got, want)
	}
}

const (
	varint = protowire.VarintType
	bytes  = protowire.BytesType
)

func testWorker() *rwpb.Worker {
	return &rwpb.Worker{
		Devices: []*rwpb.Device{{
			Handle:     "primary",
			Properties: []*rwpb.Device_Property{{Key: "OSFamily", Value: "linux"}},
		}},
		Properties: []*rwpb.Worker_Property{{Key: "pool", Value: "spot"}},
		Configs:    []*rwpb.Worker_Config{{Key: "capacity", Value: "4"}},
	}
}

func checkWorker(t *testing.T, what string, b []byte) {
	t.Helper()
	w := byNumber(t, what, decode(t, b), map[protowire.Number]protowire.Type{1: bytes, 2: bytes, 3: bytes})
	dev := byNumber(t, what+".devices[0]", decode(t, w[1][0].raw), map[protowire.Number]protowire.Type{1: bytes, 2: bytes})
	str(t, what+".devices[0].handle", dev[1], "primary")
	dp := byNumber(t, what+".devices[0].properties[0]", decode(t, dev[2][0].raw), map[protowire.Number]protowire.Type{1: bytes, 2: bytes})
	str(t, "device property key", dp[1], "OSFamily")
	str(t, "device property value", dp[2], "linux")
	wp := byNumber(t, what+".properties[0]", decode(t, w[2][0].raw), map[protowire.Number]protowire.Type{1: bytes, 2: bytes})
	str(t, "worker property key", wp[1], "pool")
	str(t, "worker property value", wp[2], "spot")
	wc := byNumber(t, what+".configs[0]", decode(t, w[3][0].raw), map[protowire.Number]protowire.Type{1: bytes, 2: bytes})
	str(t, "worker config key", wc[1], "capacity")
	str(t, "worker config value", wc[2], "4")
}

func testLease() *rwpb.Lease {
	return &rwpb.Lease{
		Id:           "lease-1",
		Payload:      &anypb.Any{TypeUrl: "type.googleapis.com/build.bazel.remote.execution.v2.Action", Value: []byte{1}},
		Result:       &anypb.Any{TypeUrl: "type.googleapis.com/build.bazel.remote.execution.v2.ActionResult", Value: []byte{2}},
		State:        rwpb.LeaseState_COMPLETED,
		Status:       &spb.Status{Code: 14, Message: "gone"},
		Requirements: testWorker(),
		ExpireTime:   &timestamppb.Timestamp{Seconds: 1700000000},
	}
}

func checkLease(t *testing.T, what string, b []byte) {
	t.Helper()
	l := byNumber(t, what, decode(t, b), map[protowire.Number]protowire.Type{
		7: bytes, 8: bytes, 9: bytes, 2: varint, 3: bytes, 4: bytes, 5: bytes,
	})
	str(t, what+".id", l[7], "lease-1")
	payload := byNumber(t, what+".payload", decode(t, l[8][0].raw), map[protowire.Number]protowire.Type{1: bytes, 2: bytes})
	str(t, what+".payload.type_url", payload[1], "type.googleapis.com/build.bazel.remote.execution.v2.Action")
	result := byNumber(t, what+".result", decode(t, l[9][0].raw), map[protowire.Number]protowire.Type{1: bytes, 2: bytes})
	str(t, what+".result.type_url", result[1], "type.googleapis.com/build.bazel.remote.execution.v2.ActionResult")
	if got := l[2][0].v; got != 4 {
		t.Errorf("%s.state = %d, want 4 (COMPLETED)", what, got)
	}
	st := byNumber(t, what+".status", decode(t, l[3][0].raw), map[protowire.Number]protowire.Type{1: varint, 2: bytes})
	if st[1][0].v != 14 {
		t.Errorf("%s.status.code = %d, want 14", what, st[1][0].v)
	}
	str(t, what+".status.message", st[2], "gone")
	checkWorker(t, what+".requirements", l[4][0].raw)
	ts := byNumber(t, what+".expire_time", decode(t, l[5][0].raw), map[protowire.Number]protowire.Type{1: varint})
	if ts[1][0].v != 1700000000 {
		t.Errorf("%s.expire_time.seconds = %d", what, ts[1][0].v)
	}
}

func testSession() *rwpb.BotSession {
	return &rwpb.BotSession{
		Name:       "farm/botSessions/abc",
		BotId:      "bot-1",
		Status:     rwpb.BotStatus_BOT_TERMINATING,
		Worker:     testWorker(),
		Leases:     []*rwpb.Lease{testLease()},
		ExpireTime: &timestamppb.Timestamp{Seconds: 1700000020},
		Version:    "v1.2.3",
	}
}

func checkSession(t *testing.T, what string, b []byte) {
	t.Helper()
	s := byNumber(t, what, decode(t, b), map[protowire.Number]protowire.Type{
		1: bytes, 2: bytes, 3: varint, 4: bytes, 5: bytes, 6: bytes, 7: bytes,
	})
	str(t, what+".name", s[1], "farm/botSessions/abc")
	str(t, what+".bot_id", s[2], "bot-1")
	if s[3][0].v != 4 {
		t.Errorf("%s.status = %d, want 4 (BOT_TERMINATING)", what, s[3][0].v)
	}
	checkWorker(t, what+".worker", s[4][0].raw)
	checkLease(t, what+".leases[0]", s[5][0].raw)
	str(t, what+".version", s[7], "v1.2.3")
}

func TestBotSessionWire(t *testing.T) {
	checkSession(t, "BotSession", marshal(t, testSession()))
}

func TestLeaseWire(t *testing.T) {
	checkLease(t, "Lease", marshal(t, testLease()))
}

func TestWorkerWire(t *testing.T) {
	checkWorker(t, "Worker", marshal(t, testWorker()))
}

func TestCreateBotSessionRequestWire(t *testing.T) {
	b := marshal(t, &rwpb.CreateBotSessionRequest{Parent: "farm", BotSession: testSession()})
	r := byNumber(t, "CreateBotSessionRequest", decode(t, b), map[protowire.Number]protowire.Type{1: bytes, 2: bytes})
	str(t, "parent", r[1], "farm")
	checkSession(t, "CreateBotSessionRequest.bot_session", r[2][0].raw)
}

func TestUpdateBotSessionRequestWire(t *testing.T) {
	b := marshal(t, &rwpb.UpdateBotSessionRequest{
		Name:       "farm/botSessions/abc",
		BotSession: testSession(),
		UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"status", "leases"}},
	})
	r := byNumber(t, "UpdateBotSessionRequest", decode(t, b), map[protowire.Number]protowire.Type{1: bytes, 2: bytes, 3: bytes})
	str(t, "name", r[1], "farm/botSessions/abc")
	checkSession(t, "UpdateBotSessionRequest.bot_session", r[2][0].raw)
	mask := byNumber(t, "update_mask", decode(t, r[3][0].raw), map[protowire.Number]protowire.Type{1: bytes})
	if len(mask[1]) != 2 || string(mask[1][0].raw) != "status" || string(mask[1][1].raw) != "leases" {
		t.Errorf("update_mask paths = %v", mask[1])
	}
}

func TestAdminTempWire(t *testing.T) {
	b := marshal(t, &rwpb.AdminTemp{Command: rwpb.AdminTemp_BOT_TERMINATE, Arg: "bye"})
	r := byNumber(t, "AdminTemp", decode(t, b), map[protowire.Number]protowire.Type{1: varint, 2: bytes})
	if r[1][0].v != 3 {
		t.Errorf("AdminTemp.command = %d, want 3", r[1][0].v)
	}
	str(t, "AdminTemp.arg", r[2], "bye")
}

// TestDecodePublicEncoding builds the bytes a bot built from the public definition sends, by
// hand, and checks that our types read them.
func TestDecodePublicEncoding(t *testing.T) {
	var lease []byte
	lease = protowire.AppendTag(lease, 7, bytes)
	lease = protowire.AppendString(lease, "L")
	lease = protowire.AppendTag(lease, 2, varint)
	lease = protowire.AppendVarint(lease, 2) // ACTIVE
	var sess []byte
	sess = protowire.AppendTag(sess, 1, bytes)
	sess = protowire.AppendString(sess, "farm/botSessions/x")
	sess = protowire.AppendTag(sess, 3, varint)
	sess = protowire.AppendVarint(sess, 1) // OK
	sess = protowire.AppendTag(sess, 5, bytes)
	sess = protowire.AppendBytes(sess, lease)
	var req []byte
	req = protowire.AppendTag(req, 1, bytes)
	req = protowire.AppendString(req, "farm/botSessions/x")
	req = protowire.AppendTag(req, 2, bytes)
	req = protowire.AppendBytes(req, sess)

	var got rwpb.UpdateBotSessionRequest
	if err := proto.Unmarshal(req, &got); err != nil {
		t.Fatal(err)
	}
	s := got.GetBotSession()
	if got.GetName() != "farm/botSessions/x" || s.GetName() != "farm/botSessions/x" || s.GetStatus() != rwpb.BotStatus_OK ||
		len(s.GetLeases()) != 1 || s.GetLeases()[0].GetId() != "L" || s.GetLeases()[0].GetState() != rwpb.LeaseState_ACTIVE {
		t.Fatalf("decoded %v", &got)
	}
	if len(got.ProtoReflect().GetUnknown()) != 0 || len(s.ProtoReflect().GetUnknown()) != 0 {
		t.Fatal("fields of the public definition decoded as unknown")
	}
}

func TestEnumValues(t *testing.T) {
	check := func(ed protoreflect.EnumDescriptor, want map[string]protoreflect.EnumNumber) {
		t.Helper()
		vals := ed.Values()
		if vals.Len() != len(want) {
			t.Errorf("%s has %d values, want %d", ed.FullName(), vals.Len(), len(want))
		}
		for name, num := range want {
			v := vals.ByName(protoreflect.Name(name))
			if v == nil {
				t.Errorf("%s.%s missing", ed.FullName(), name)
			} else if v.Number() != num {
				t.Errorf("%s.%s = %d, want %d", ed.FullName(), name, v.Number(), num)
			}
		}
	}
	check(rwpb.BotStatus(0).Descriptor(), map[string]protoreflect.EnumNumber{
		"BOT_STATUS_UNSPECIFIED": 0, "OK": 1, "UNHEALTHY": 2, "HOST_REBOOTING": 3, "BOT_TERMINATING": 4, "INITIALIZING": 5,
	})
	check(rwpb.LeaseState(0).Descriptor(), map[string]protoreflect.EnumNumber{
		"LEASE_STATE_UNSPECIFIED": 0, "PENDING": 1, "ACTIVE": 2, "COMPLETED": 4, "CANCELLED": 5,
	})
	check(rwpb.AdminTemp_Command(0).Descriptor(), map[string]protoreflect.EnumNumber{
		"UNSPECIFIED": 0, "BOT_UPDATE": 1, "BOT_RESTART": 2, "BOT_TERMINATE": 3, "HOST_RESTART": 4,
	})
}

func TestNamesMatchPublicDefinition(t *testing.T) {
	const pkg = "google.devtools.remoteworkers.v1test2."
	msgs := map[proto.Message]map[string]protoreflect.FieldNumber{
		&rwpb.BotSession{}:              {"name": 1, "bot_id": 2, "status": 3, "worker": 4, "leases": 5, "expire_time": 6, "version": 7},
		&rwpb.Lease{}:                   {"id": 7, "payload": 8, "result": 9, "state": 2, "status": 3, "requirements": 4, "expire_time": 5},
		&rwpb.Worker{}:                  {"devices": 1, "properties": 2, "configs": 3},
		&rwpb.Device{}:                  {"handle": 1, "properties": 2},
		&rwpb.Worker_Property{}:         {"key": 1, "value": 2},
		&rwpb.Worker_Config{}:           {"key": 1, "value": 2},
		&rwpb.Device_Property{}:         {"key": 1, "value": 2},
		&rwpb.CreateBotSessionRequest{}: {"parent": 1, "bot_session": 2},
		&rwpb.UpdateBotSessionRequest{}: {"name": 1, "bot_session": 2, "update_mask": 3},
		&rwpb.AdminTemp{}:               {"command": 1, "arg": 2},
	}
	for m, want := range msgs {
		md := m.ProtoReflect().Descriptor()
		if got := string(md.FullName()); len(got) <= len(pkg) || got[:len(pkg)] != pkg {
			t.Errorf("message %s is not in package %s", got, pkg)
		}
		if md.Fields().Len() != len(want) {
			t.Errorf("%s has %d fields, want %d", md.FullName(), md.Fields().Len(), len(want))
		}
		for name, num := range want {
			fd := md.Fields().ByName(protoreflect.Name(name))
			if fd == nil {
				t.Errorf("%s.%s missing", md.FullName(), name)
			} else if fd.Number() != num {
				t.Errorf("%s.%s = %d, want %d", md.FullName(), name, fd.Number(), num)
			}
		}
	}
	rr := (&rwpb.Lease{}).ProtoReflect().Descriptor().ReservedRanges()
	for _, n := range []protoreflect.FieldNumber{1, 6} {
		if !rr.Has(n) {
			t.Errorf("Lease field %d is not reserved", n)
		}
	}
	sd := rwpb.File_remoteworkers_v1test2_bots_proto.Services().ByName("Bots")
	if sd == nil || sd.FullName() != pkg+"Bots" || sd.Methods().ByName("CreateBotSession") == nil || sd.Methods().ByName("UpdateBotSession") == nil {
		t.Fatalf("service Bots not declared as in the public definition: %v", sd)
	}
	if got := rwpb.Bots_UpdateBotSession_FullMethodName; got != "/google.devtools.remoteworkers.v1test2.Bots/UpdateBotSession" {
		t.Errorf("UpdateBotSession method path %q", got)
	}
}
