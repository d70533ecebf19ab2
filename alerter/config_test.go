package alerter_test

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/pulseboard/pulseboard/alerter"
	"github.com/pulseboard/pulseboard/pkg/config"
)

func TestConfigDefaultsAndValidation(t *testing.T) {
	t.Parallel()
	cfg, err := config.Parse[alerter.Config](config.Env{})
	require.NoError(t, err)
	require.NoError(t, cfg.Validate())
	require.Equal(t, "pulseboard-alerter", cfg.GroupID)
	require.Equal(t, 10, cfg.Threshold)
	require.Equal(t, "1m0s", cfg.Window.String())
	require.Equal(t, "15m0s", cfg.Cooldown.String())
	require.Equal(t, "0 0 * * *", cfg.DigestCron)
	require.Equal(t, "0 2 * * *", cfg.RetentionCron)
	require.Equal(t, 30, cfg.RetentionDays)

	cfg, err = config.Parse[alerter.Config](config.Env{
		"DIGEST_CRON": "every day", "ALERT_ERROR_THRESHOLD": "0", "RETENTION_DAYS": "0", "SMTP_HOST": "x", "SMTP_PORT": "0",
	})
	require.NoError(t, err)
	err = cfg.Validate()
	for _, want := range []string{"DIGEST_CRON", "ALERT_ERROR_THRESHOLD", "RETENTION_DAYS", "SMTP_PORT"} {
		require.ErrorContains(t, err, want)
	}
}
