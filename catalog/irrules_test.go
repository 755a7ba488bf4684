package catalog

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func TestInstantRestoreRules(t *testing.T) {
	irOff := Project{Name: "p"}
	irOn := Project{Name: "p", IREnabledAt: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	fresh := Server{Name: "web1"}
	autoed := Server{Name: "web1", HadAutoBackup: true}
	fulled := Server{Name: "web1", HadAutoBackup: true, ManualFullAfterIR: true}
	manual := func(full, ir bool) BackupRequest {
		return BackupRequest{Trigger: TriggerManual, Full: full, EnableIR: ir}
	}
	auto := BackupRequest{Trigger: TriggerAuto}

	cases := []struct {
		name        string
		project     Project
		server      Server
		req         BackupRequest
		want        string
		enables     bool
		marksFull   bool
		reasonHas   string
		wantErrLike string
	}{
		// Rule 1: before IR is enabled, every backup is Common.
		{name: "1 manual before IR", project: irOff, server: fresh, req: manual(false, false), want: TypeCommon, reasonHas: "--full --enable-instant-restore"},
		{name: "1 manual full without IR flag", project: irOff, server: fresh, req: manual(true, false), want: TypeCommon, reasonHas: "before Instant Restore was enabled"},
		{name: "1 auto before IR", project: irOff, server: autoed, req: auto, want: TypeCommon},
		// Rule 2: manual full + enable IR enables IR and is Enhanced.
		{name: "2 manual full enables IR", project: irOff, server: fresh, req: manual(true, true), want: TypeEnhanced, enables: true, marksFull: true},
		{name: "2 again with IR already on", project: irOn, server: autoed, req: manual(true, true), want: TypeEnhanced, marksFull: true},
		{name: "2 IR flag without full", project: irOff, server: fresh, req: manual(false, true), wantErrLike: "needs --full"},
		// Rule 3: IR on, manual, never auto-backed up: Enhanced without --full.
		{name: "3 manual of never-auto server", project: irOn, server: fresh, req: manual(false, false), want: TypeEnhanced},
		{name: "3 not when the server had auto backups", project: irOn, server: autoed, req: manual(false, false), want: TypeCommon, reasonHas: "--full"},
		// Rule 4: IR on, automatic backups Common unless a manual full after IR.
		{name: "4 auto without manual full", project: irOn, server: autoed, req: auto, want: TypeCommon, reasonHas: "csbs backup create web1 --full"},
		{name: "4 auto of fresh server", project: irOn, server: fresh, req: auto, want: TypeCommon},
		{name: "4 manual full after IR marks server", project: irOn, server: autoed, req: manual(true, false), want: TypeEnhanced, marksFull: true},
		{name: "4 auto after manual full", project: irOn, server: fulled, req: auto, want: TypeEnhanced},
		{name: "4 manual incremental after manual full", project: irOn, server: fulled, req: manual(false, false), want: TypeEnhanced},
		{name: "auto cannot enable IR", project: irOff, server: fresh, req: BackupRequest{Trigger: TriggerAuto, Full: true, EnableIR: true}, wantErrLike: "cannot enable"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			d, err := DecideType(tc.project, tc.server, tc.req)
			if tc.wantErrLike != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErrLike) {
					t.Fatalf("got %+v, %v; want error %q", d, err, tc.wantErrLike)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if d.Type != tc.want || d.EnablesIR != tc.enables || d.MarksManualFull != tc.marksFull {
				t.Fatalf("got %+v; want type %s enables=%v marksFull=%v", d, tc.want, tc.enables, tc.marksFull)
			}
			if d.Reason == "" || !strings.Contains(d.Reason, tc.reasonHas) {
				t.Fatalf("reason %q lacks %q", d.Reason, tc.reasonHas)
			}
		})
	}
	if _, err := DecideType(irOff, fresh, manual(false, true)); !errors.Is(err, ErrIRNeedsFull) {
		t.Fatalf("ErrIRNeedsFull not returned: %v", err)
	}
}
