/**
 * wml-jupyter: the JupyterLab sidebar of WML training runs, and "Train this cell with WML…".
 */
import {
  ILayoutRestorer,
  JupyterFrontEnd,
  JupyterFrontEndPlugin
} from '@jupyterlab/application';
import { ICommandPalette, ToolbarButton } from '@jupyterlab/apputils';
import { INotebookTracker, NotebookPanel } from '@jupyterlab/notebook';
import { ServerConnection } from '@jupyterlab/services';

import { WmlApi } from './api';
import { CommandIds, registerCommands, sidebarActions } from './commands';
import { EventFeed } from './events';
import { wmlIcon } from './icons';
import { SidebarWidget } from './panel';
import { SidebarModel } from './state';

/** Rank of the sidebar among the left panels (after the file browser, running, TOC). */
const SIDEBAR_RANK = 700;
/** Where the "Train this cell" button goes in the notebook toolbar. */
const TOOLBAR_INDEX = 10;

/** The request layer, sending through JupyterLab's connection (Jupyter token and XSRF). */
function createApi(): WmlApi {
  const settings = ServerConnection.makeSettings();
  return new WmlApi(settings.baseUrl, (url, init) => ServerConnection.makeRequest(url, init, settings));
}

/** Add the "Train this cell" button to every notebook's toolbar. */
function addToolbarButton(app: JupyterFrontEnd): void {
  app.docRegistry.addWidgetExtension('Notebook', {
    createNew: (panel: NotebookPanel) => {
      const button = new ToolbarButton({
        icon: wmlIcon,
        label: 'Train',
        tooltip: 'Train this cell with WML…',
        onClick: () => void app.commands.execute(CommandIds.trainCell)
      });
      panel.toolbar.insertItem(TOOLBAR_INDEX, 'wml-train-cell', button);
      return button;
    }
  });
}

/** The plugin: sidebar, commands, toolbar button and cell context-menu item. */
const plugin: JupyterFrontEndPlugin<void> = {
  id: 'wml-jupyter:plugin',
  description: 'WML training runs in the sidebar; train a notebook cell with WML.',
  autoStart: true,
  requires: [INotebookTracker],
  optional: [ILayoutRestorer, ICommandPalette],
  activate: (
    app: JupyterFrontEnd,
    notebooks: INotebookTracker,
    restorer: ILayoutRestorer | null,
    palette: ICommandPalette | null
  ) => {
    const api = createApi();
    const sidebar = new SidebarWidget(new SidebarModel(api), sidebarActions(app), new EventFeed(api));
    app.shell.add(sidebar, 'left', { rank: SIDEBAR_RANK });
    restorer?.add(sidebar, sidebar.id);
    registerCommands({ app, api, sidebar, notebooks });
    addToolbarButton(app);
    app.contextMenu.addItem({ command: CommandIds.trainCell, selector: '.jp-Notebook .jp-CodeCell', rank: 20 });
    for (const command of [CommandIds.openSidebar, CommandIds.refresh, CommandIds.trainCell]) {
      palette?.addItem({ command, category: 'WML' });
    }
  }
};

export default plugin;
