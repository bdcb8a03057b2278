package main

import (
	"context"
	"fmt"
	"strings"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/proto"

	notifyv1 "notify/proto/gen/notify/v1"
)

var roleFlags = map[string]notifyv1.Role{
	"publisher": notifyv1.Role_ROLE_PUBLISHER,
	"admin":     notifyv1.Role_ROLE_ADMIN,
}

func shortRole(r notifyv1.Role) string {
	return strings.ToLower(strings.TrimPrefix(r.String(), "ROLE_"))
}

func (c *cli) keysCommand() *cobra.Command {
	cmd := &cobra.Command{Use: "keys", Short: "Create, list and revoke API keys", RunE: group}
	cmd.AddCommand(c.keysCreateCommand(), c.keysListCommand(), c.keysRevokeCommand())
	return cmd
}

func (c *cli) keysCreateCommand() *cobra.Command {
	var role string
	var apps []string
	var ignorePrefs bool
	var rate, burst int32
	cmd := &cobra.Command{
		Use:   "create NAME --role publisher|admin [--apps a,b] [--allow-ignore-preferences] [--publish-rate N] [--publish-burst N]",
		Short: "Create an API key; prints only its secret, once",
		Long: `Create an API key. Only the secret is printed on stdout, once (KEY=$(notifyctl keys create …)
works): notify keeps only its SHA-256. A publisher key may publish and manage devices; an
admin key may do everything. --apps limits a publisher key to those apps.
--allow-ignore-preferences lets a publisher key publish with ignore_preferences (security
messages that reach users who muted their type); admin keys always may.
--publish-rate and --publish-burst give the key its own rate limit instead of its role's
(PUBLISH_RATE_PER_KEY or PUBLISH_RATE_PER_ADMIN_KEY, and PUBLISH_BURST_PER_KEY), per
producer replica; a key cannot be changed later: make a new one and revoke the old.`,
		Args: positional(1, "one key NAME"),
	}
	cmd.Flags().StringVar(&role, "role", "", "publisher or admin")
	cmd.Flags().StringSliceVar(&apps, "apps", nil, "limit a publisher key to these `apps` (comma-separated; default: every app)")
	cmd.Flags().BoolVar(&ignorePrefs, "allow-ignore-preferences", false,
		"let a publisher key publish with ignore_preferences (admin keys always may)")
	cmd.Flags().Int32Var(&rate, "publish-rate", 0, "the key's own publish rate, notifications per second per producer replica (0: unlimited; default: its role's)")
	cmd.Flags().Int32Var(&burst, "publish-burst", 0, "the key's own burst, 1 to 1,000,000 (default: PUBLISH_BURST_PER_KEY)")
	_ = cmd.MarkFlagRequired("role")
	enumFlag(cmd, "role", "publisher", "admin")
	cmd.RunE = c.action(func(ctx context.Context, args []string) error {
		r, err := enumValue("keys create", "role", role, "role_", roleFlags, "publisher or admin")
		if err != nil {
			return err
		}
		req := &notifyv1.CreateAPIKeyRequest{Name: args[0], Role: r, Apps: apps, AllowIgnorePreferences: ignorePrefs}
		// Unset means the role's default, so only a flag given is sent (0 is unlimited).
		if cmd.Flags().Changed("publish-rate") {
			if rate < 0 {
				return usagef("keys create: --publish-rate %d: want 0 (unlimited) or more notifications per second", rate)
			}
			req.PublishRate = proto.Int32(rate)
		}
		if cmd.Flags().Changed("publish-burst") {
			if burst < 1 {
				return usagef("keys create: --publish-burst %d: want 1 or more", burst)
			}
			req.PublishBurst = proto.Int32(burst)
		}
		conn, callCtx, cancel, err := c.open(ctx)
		if err != nil {
			return err
		}
		defer cancel()
		resp, err := notifyv1.NewAdminServiceClient(conn).CreateAPIKey(callCtx, req)
		if err != nil {
			return err
		}
		return c.emit(resp, func() error {
			fmt.Fprintln(c.out, resp.GetSecret())
			fmt.Fprintf(c.errOut, "created %s key %q; its secret (above) is shown only this once: notify stores only its SHA-256\n",
				shortRole(r), resp.GetKey().GetName())
			return nil
		})
	})
	return cmd
}

func (c *cli) keysListCommand() *cobra.Command {
	var all bool
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List API keys (never their secrets)",
		Args:  positional(0, ""),
	}
	cmd.Flags().BoolVar(&all, "all", false, "revoked keys too")
	cmd.RunE = c.action(func(ctx context.Context, _ []string) error {
		conn, callCtx, cancel, err := c.open(ctx)
		if err != nil {
			return err
		}
		defer cancel()
		resp, err := notifyv1.NewAdminServiceClient(conn).ListAPIKeys(callCtx, &notifyv1.ListAPIKeysRequest{IncludeRevoked: all})
		if err != nil {
			return err
		}
		return c.emit(resp, func() error {
			tw := c.table("NAME", "ROLE", "CREATED", "LAST USED", "REVOKED", "RATE", "BURST", "APPS", "IGNORE PREFS")
			for _, k := range resp.GetKeys() {
				apps := "all"
				if len(k.GetApps()) > 0 {
					apps = strings.Join(k.GetApps(), ",")
				}
				rate, burst := "default", "default"
				switch {
				case k.PublishRate == nil:
				case k.GetPublishRate() == 0:
					rate = "unlimited"
				default:
					rate = fmt.Sprintf("%d/s", k.GetPublishRate())
				}
				if k.PublishBurst != nil {
					burst = fmt.Sprint(k.GetPublishBurst())
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", k.GetName(), shortRole(k.GetRole()), stamp(k.GetCreateTime()),
					stamp(k.GetLastUsedTime()), stamp(k.GetRevokeTime()), rate, burst, apps, yesNo(k.GetAllowIgnorePreferences()))
			}
			return tw.Flush()
		})
	})
	return cmd
}

func (c *cli) keysRevokeCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "revoke NAME",
		Short: "Revoke an API key",
		Long: `Revoke an API key. Other producer replicas refuse it within their key cache TTL
(API_KEY_CACHE_TTL, 15s by default). Exit code 3 when no active key has that name.`,
		Args: positional(1, "one key NAME"),
	}
	cmd.RunE = c.action(func(ctx context.Context, args []string) error {
		conn, callCtx, cancel, err := c.open(ctx)
		if err != nil {
			return err
		}
		defer cancel()
		resp, err := notifyv1.NewAdminServiceClient(conn).RevokeAPIKey(callCtx, &notifyv1.RevokeAPIKeyRequest{Name: args[0]})
		if err != nil {
			return err
		}
		return c.emitFound(resp, resp.GetRevoked(), fmt.Sprintf("revoked key %q", args[0]),
			fmt.Sprintf("keys revoke: no active key named %q", args[0]))
	})
	return cmd
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}
