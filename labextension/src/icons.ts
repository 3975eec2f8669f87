/** The sidebar's icon (theme-aware: `jp-icon3` follows the light and dark themes). */
import { LabIcon } from '@jupyterlab/ui-components';

/** A training curve rising over its axes, its latest point in the brand colour. */
const WML_SVG = `<svg xmlns="http://www.w3.org/2000/svg" width="16" height="16" viewBox="0 0 24 24">
  <g class="jp-icon3" stroke="#616161" stroke-width="2" stroke-linecap="round" stroke-linejoin="round">
    <path fill="none" d="M3 3v18h18"/>
    <path fill="none" d="M6.5 16.5l4-5.5 3.5 3 5.5-8"/>
  </g>
  <circle class="jp-icon-brand0" fill="#1976d2" cx="19.5" cy="6" r="2.2"/>
</svg>`;

/** The WML icon of the sidebar tab, commands and toolbar button. */
export const wmlIcon = new LabIcon({ name: 'wml-jupyter:wml', svgstr: WML_SVG });
