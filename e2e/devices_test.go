package e2e

import (
	"encoding/json"
	"strings"
	"testing"
)

// TestDevicesListAndUnregister lists a user's devices with notifyctl, with a publisher key,
// before and after one is unregistered and one's token moves to another device.
func TestDevicesListAndUnregister(t *testing.T) {
	s := newStack(t)
	s.start("producer", nil)
	pub := strings.TrimSpace(s.mustCtl(0, s.adminKey, "keys", "create", "devices-publisher", "--role", "publisher").stdout)

	s.mustCtl(0, pub, "devices", "register", "--user", "lea", "--device", "lea-phone", "--token", "lea-tok-1", "--platform", "android")
	s.mustCtl(0, pub, "devices", "register", "--user", "lea", "--device", "lea-ipad", "--token", "lea-tok-2", "--platform", "ios")
	s.mustCtl(0, pub, "devices", "register", "--user", "lea", "--device", "lea-web", "--token", "lea-tok-3", "--platform", "web")
	s.mustCtl(0, pub, "devices", "register", "--user", "max", "--device", "max-phone", "--token", "max-tok", "--platform", "android")

	s.mustCtl(0, pub, "devices", "unregister", "lea-ipad")
	s.mustCtl(3, pub, "devices", "unregister", "no-such-device")
	// lea's web token is registered again by a new installation: lea-web is deactivated.
	s.mustCtl(0, pub, "devices", "register", "--user", "lea", "--device", "lea-web-2", "--token", "lea-tok-3", "--platform", "web")

	type dev struct {
		DeviceID           string `json:"deviceId"`
		Platform           string `json:"platform"`
		Token              string `json:"token"`
		Active             bool   `json:"active"`
		DeactivationReason string `json:"deactivationReason"`
		RegisterTime       string `json:"registerTime"`
		LastSeenTime       string `json:"lastSeenTime"`
		DeactivateTime     string `json:"deactivateTime"`
	}
	var listed struct{ Devices []dev }
	if out := s.mustCtl(0, pub, "devices", "list", "--user", "lea", "-o", "json").stdout; json.Unmarshal([]byte(out), &listed) != nil {
		t.Fatalf("devices list -o json printed no JSON:\n%s", out)
	}
	got := map[string]dev{}
	for _, d := range listed.Devices {
		got[d.DeviceID] = d
		if d.RegisterTime == "" || d.LastSeenTime == "" || d.Active == (d.DeactivateTime != "") {
			t.Errorf("device %+v: want register and last seen times, a deactivate time only when inactive", d)
		}
	}
	if len(got) != 4 || listed.Devices[0].DeviceID != "lea-web-2" {
		t.Fatalf("devices list --user lea = %+v, want lea's 4 devices, the newest (lea-web-2) first", listed.Devices)
	}
	for id, want := range map[string]dev{
		"lea-phone": {Platform: "PLATFORM_ANDROID", Active: true},
		"lea-ipad":  {Platform: "PLATFORM_IOS", DeactivationReason: "unregistered"},
		"lea-web":   {Platform: "PLATFORM_WEB", DeactivationReason: "token_moved"},
		"lea-web-2": {Platform: "PLATFORM_WEB", Active: true},
	} {
		d := got[id]
		if d.Platform != want.Platform || d.Active != want.Active || d.DeactivationReason != want.DeactivationReason {
			t.Errorf("%s: %+v, want %+v", id, d, want)
		}
	}

	active := s.mustCtl(0, pub, "devices", "list", "--user", "lea", "--active", "--no-headers").stdout
	if rows := strings.Split(strings.TrimSpace(active), "\n"); len(rows) != 2 || !strings.HasPrefix(rows[0], "lea-web-2 ") ||
		!strings.HasPrefix(rows[1], "lea-phone ") {
		t.Errorf("devices list --active --no-headers:\n%s\nwant lea-web-2 then lea-phone", active)
	}
	if out := s.mustCtl(0, pub, "devices", "list", "--user", "nobody", "--no-headers").stdout; strings.TrimSpace(out) != "" {
		t.Errorf("devices list for an unknown user printed %q", out)
	}
	// A bad value is refused naming the field.
	if r := s.mustCtl(1, pub, "devices", "list", "--user", strings.Repeat("u", 129)); !strings.Contains(r.stderr, "user_id") {
		t.Errorf("devices list with a 129-character user: %s", r.stderr)
	}
}
