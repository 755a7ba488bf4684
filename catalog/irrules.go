package catalog

import "fmt"

// TypeDecision is the outcome of the Instant Restore rules for one backup.
type TypeDecision struct {
	Type   string // TypeCommon or TypeEnhanced
	Reason string
	// EnablesIR: committing this backup enables IR for the project.
	EnablesIR bool
	// MarksManualFull: committing this backup records a manual full backup
	// after IR was enabled on the server (rule 4).
	MarksManualFull bool
}

// BackupRequest is what the IR rules look at.
type BackupRequest struct {
	Trigger  string // TriggerManual or TriggerAuto
	Full     bool
	EnableIR bool
}

// ErrIRNeedsFull: --enable-instant-restore only goes with --full.
var ErrIRNeedsFull = fmt.Errorf("--enable-instant-restore needs --full: Instant Restore is enabled by a manual full backup")

// DecideType applies the CSBS Instant Restore rules:
//
//  1. Backups made before IR is enabled (for the project) are Common.
//  2. A manual full backup with --enable-instant-restore enables IR and is
//     Enhanced.
//  3. After IR is enabled, a manual backup of a server that has never been
//     backed up automatically is Enhanced, without --full.
//  4. After IR is enabled, automatic backups are Common, unless a manual
//     full backup was performed on that server after IR was enabled; from
//     then on its backups are Enhanced.
func DecideType(p Project, s Server, r BackupRequest) (TypeDecision, error) {
	manual := r.Trigger == TriggerManual
	if r.EnableIR && !manual {
		return TypeDecision{}, fmt.Errorf("automatic backups cannot enable Instant Restore")
	}
	if r.EnableIR && !r.Full {
		return TypeDecision{}, ErrIRNeedsFull
	}
	howTo := fmt.Sprintf("run `csbs backup create %s --full --enable-instant-restore`", s.Name)
	if !p.IREnabled() {
		if r.EnableIR { // rule 2
			return TypeDecision{Type: TypeEnhanced, Reason: "manual full backup that enabled Instant Restore", EnablesIR: true, MarksManualFull: true}, nil
		}
		return TypeDecision{Type: TypeCommon, Reason: "made before Instant Restore was enabled for the project; to get an Enhanced backup, " + howTo}, nil
	}
	howTo = fmt.Sprintf("run `csbs backup create %s --full`", s.Name)
	if manual {
		switch {
		case r.Full: // rule 2 (IR already on) and the event of rule 4
			return TypeDecision{Type: TypeEnhanced, Reason: "manual full backup with Instant Restore enabled", MarksManualFull: true}, nil
		case s.ManualFullAfterIR: // rule 4, "from then on"
			return TypeDecision{Type: TypeEnhanced, Reason: "the server had a manual full backup after Instant Restore was enabled"}, nil
		case !s.HadAutoBackup: // rule 3
			return TypeDecision{Type: TypeEnhanced, Reason: "manual backup of a server never backed up automatically, with Instant Restore enabled"}, nil
		}
		return TypeDecision{Type: TypeCommon, Reason: "the server has automatic backups and no manual full backup since Instant Restore was enabled; to get an Enhanced backup, " + howTo}, nil
	}
	if s.ManualFullAfterIR { // rule 4
		return TypeDecision{Type: TypeEnhanced, Reason: "automatic backup after a manual full backup with Instant Restore enabled"}, nil
	}
	return TypeDecision{Type: TypeCommon, Reason: "automatic backups are Common until a manual full backup is made after Instant Restore was enabled; " + howTo}, nil
}
