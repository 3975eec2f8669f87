/**
 * The extension's commands: what the sidebar's buttons, the notebook toolbar and the cell
 * context menu run (also reachable from the command palette).
 */
import { JupyterFrontEnd } from '@jupyterlab/application';
import { Clipboard, Dialog, Notification, showDialog } from '@jupyterlab/apputils';
import { PathExt } from '@jupyterlab/coreutils';
import { INotebookTracker, NotebookActions, NotebookPanel } from '@jupyterlab/notebook';

import { WmlApi } from './api';
import { defaultForm } from './format';
import { wmlIcon } from './icons';
import { createLogTab } from './logs';
import { SidebarActions, SidebarWidget } from './panel';
import { errorView } from './state';
import { askTrainOptions } from './train';
import { CellMagicError, formFromLine, splitCell, trainLine, withTrainLine } from './trainline';

/** Command ids. */
export const CommandIds = {
  openSidebar: 'wml:open-sidebar',
  refresh: 'wml:refresh',
  cancelRun: 'wml:cancel-run',
  cancelExperiment: 'wml:cancel-experiment',
  openLogs: 'wml:open-logs',
  download: 'wml:download-results',
  copyRunId: 'wml:copy-run-id',
  insertWatch: 'wml:insert-watch',
  trainCell: 'wml:train-cell'
} as const;

/** What the commands work with. */
export interface CommandContext {
  app: JupyterFrontEnd;
  api: WmlApi;
  sidebar: SidebarWidget;
  notebooks: INotebookTracker;
}

/** The sidebar's actions, each running the matching command. */
export function sidebarActions(app: JupyterFrontEnd): SidebarActions {
  const run = (id: string, args: Record<string, string>) => void app.commands.execute(id, args);
  return {
    cancelRun: r => run(CommandIds.cancelRun, { runId: r.id }),
    cancelExperiment: e => run(CommandIds.cancelExperiment, { experimentId: e.id }),
    openLogs: r => run(CommandIds.openLogs, { runId: r.id }),
    download: r => run(CommandIds.download, { runId: r.id }),
    copyId: r => run(CommandIds.copyRunId, { runId: r.id }),
    insertWatch: e => run(CommandIds.insertWatch, { experimentId: e.id })
  };
}

/** Show a failed action as a notification (never as a console error only). */
function report(what: string, error: unknown): void {
  const view = errorView(error);
  Notification.error(`${what}: ${view.message} ${view.hint}`.trim(), { autoClose: 8000 });
}

/** Ask before cancelling; true if the user confirmed. Enter keeps it running: cancelling takes a click. */
async function confirmCancel(what: string, detail: string): Promise<boolean> {
  const result = await showDialog({
    title: `Cancel ${what}?`,
    body: detail,
    buttons: [Dialog.cancelButton({ label: 'Keep running' }), Dialog.warnButton({ label: `Cancel ${what}` })],
    defaultButton: 0
  });
  return result.button.accept;
}

/** Register every command. */
export function registerCommands(ctx: CommandContext): void {
  const { app, api, sidebar } = ctx;
  const { commands } = app;
  const arg = (args: unknown, key: string) => String((args as Record<string, unknown>)[key] ?? '');

  commands.addCommand(CommandIds.openSidebar, {
    label: 'Show WML training runs',
    icon: wmlIcon,
    execute: () => app.shell.activateById(sidebar.id)
  });
  commands.addCommand(CommandIds.refresh, {
    label: 'Refresh WML training runs',
    execute: () => sidebar.refresh()
  });
  commands.addCommand(CommandIds.cancelRun, {
    label: 'Cancel WML run',
    execute: async args => {
      const runId = arg(args, 'runId');
      if (await confirmCancel('run', `Run ${runId} will stop and end HALTED.`)) {
        await api.cancelRun(runId).then(() => sidebar.refresh(), e => report(`Cancel ${runId}`, e));
      }
    }
  });
  commands.addCommand(CommandIds.cancelExperiment, {
    label: 'Cancel WML experiment',
    execute: async args => {
      const id = arg(args, 'experimentId');
      if (await confirmCancel('experiment', `Every live run of experiment ${id} will stop and end HALTED.`)) {
        await api.cancelExperiment(id).then(() => sidebar.refresh(), e => report(`Cancel ${id}`, e));
      }
    }
  });
  commands.addCommand(CommandIds.openLogs, {
    label: 'Open WML run logs',
    execute: args => openLogs(ctx, arg(args, 'runId'))
  });
  commands.addCommand(CommandIds.download, {
    label: 'Download WML run results',
    execute: args => downloadResults(api, arg(args, 'runId'))
  });
  commands.addCommand(CommandIds.copyRunId, {
    label: 'Copy WML run id',
    execute: args => {
      Clipboard.copyToSystem(arg(args, 'runId'));
      Notification.success(`Copied ${arg(args, 'runId')}`, { autoClose: 2000 });
    }
  });
  commands.addCommand(CommandIds.insertWatch, {
    label: 'Insert %wml watch in the notebook',
    execute: args => insertWatch(ctx, arg(args, 'experimentId'))
  });
  commands.addCommand(CommandIds.trainCell, {
    label: 'Train this cell with WML…',
    caption: 'Submit the active cell as a WML training experiment (as %%wml train)',
    icon: wmlIcon,
    isEnabled: () => ctx.notebooks.activeCell?.model.type === 'code',
    execute: () => trainCell(ctx)
  });
}

function openLogs(ctx: CommandContext, runId: string): void {
  const id = `wml-logs-${runId}`;
  const open = Array.from(ctx.app.shell.widgets('main')).find(w => w.id === id);
  if (open) {
    ctx.app.shell.activateById(id);
    return;
  }
  ctx.app.shell.add(createLogTab(ctx.api, runId), 'main');
}

async function downloadResults(api: WmlApi, runId: string): Promise<void> {
  const fetching = api.results(runId).then(blob => {
    saveBlob(blob, `${runId}-results.zip`);
    return runId;
  });
  Notification.promise(fetching, {
    pending: { message: `Fetching the results of ${runId}…`, options: { autoClose: false } },
    success: { message: () => `Downloaded ${runId}-results.zip`, options: { autoClose: 3000 } },
    error: { message: (e: unknown) => `Results of ${runId}: ${errorView(e).message}` }
  });
  await fetching.catch(() => undefined);
}

/** Hand `blob` to the browser as a download named `filename`. */
function saveBlob(blob: Blob, filename: string): void {
  const url = URL.createObjectURL(blob);
  const link = document.createElement('a');
  link.href = url;
  link.download = filename;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

/** Code run silently before a `%wml` cell runs, so the magic works on a fresh kernel (no output). */
const LOAD_MAGICS = '%load_ext wml_jupyter';

/**
 * Run the notebook's active cell as the Run button does (its output, the live display, shows in
 * the notebook), after loading the magics silently. Without a kernel the cell is left to run by hand.
 */
async function runWithMagics(panel: NotebookPanel): Promise<boolean> {
  await panel.sessionContext.ready;
  const kernel = panel.sessionContext.session?.kernel;
  if (!kernel) {
    return false;
  }
  await kernel.requestExecute({ code: LOAD_MAGICS, silent: true, store_history: false }).done;
  return NotebookActions.run(panel.content, panel.sessionContext);
}

async function insertWatch(ctx: CommandContext, experimentId: string): Promise<void> {
  const panel = ctx.notebooks.currentWidget;
  if (!panel) {
    Notification.warning('Open a notebook to insert the live display of an experiment.');
    return;
  }
  ctx.app.shell.activateById(panel.id);
  const notebook = panel.content;
  NotebookActions.insertBelow(notebook);
  notebook.activeCell?.model.sharedModel.setSource(`%wml watch ${experimentId}`);
  await runWithMagics(panel);
}

/**
 * Ask for the options, write the equivalent `%%wml train …` line at the top of the active cell
 * (see `trainline.ts` for where it goes) and run the cell: the magic submits the experiment and
 * the cell shows its live display, exactly as running a cell written by hand would.
 */
async function trainCell(ctx: CommandContext): Promise<void> {
  const panel = ctx.notebooks.currentWidget;
  const cell = ctx.notebooks.activeCell;
  if (!panel || !cell || cell.model.type !== 'code') {
    return;
  }
  const stem = PathExt.basename(panel.context.path, PathExt.extname(panel.context.path));
  try {
    const { line, code } = splitCell(cell.model.sharedModel.getSource());
    const defaults = await ctx.api.trainDefaults();
    const { form, extra } = formFromLine(line, defaultForm(defaults, stem));
    const request = await askTrainOptions(code, form);
    if (!request) {
      return;
    }
    const { code: _code, ...options } = request;
    cell.model.sharedModel.setSource(withTrainLine(trainLine(options, defaults, extra), code));
    if (!(await runWithMagics(panel))) {
      Notification.info('The %%wml train line is written: run the cell once a kernel is started.', {
        autoClose: 5000
      });
    }
    await ctx.sidebar.refresh();
  } catch (error) {
    if (error instanceof CellMagicError) {
      Notification.warning(error.message, { autoClose: 8000 });
      return;
    }
    report('Train this cell', error);
  }
}
